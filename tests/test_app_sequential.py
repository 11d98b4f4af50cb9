"""The dashboard's error bars and sequential scans: the Sensitivity page runs a sequential scan (cells settled and
samples saved shown, settled cells marked), its confidence level redraws every interval, and the Schedule page's
prediction carries its band and says when the eval set is too small for it to mean anything."""

from __future__ import annotations

from app_support import app, assert_clean, plotly_specs, sample_profile, sample_scan, stored_run, texts  # noqa: F401

from analysis.core.profile import EARLY, tolerance_table
from analysis.schedule.predict import Predictor
from analysis.sensitivity import adaptive
from ui import runs
from ui.common import WorkloadSpec

SPEC = WorkloadSpec()


def _figure(at, title_word: str) -> dict:  # noqa: ANN001
    return next(f for f in plotly_specs(at) if title_word in f["layout"]["title"]["text"])


def _number(at, start: str):  # noqa: ANN001, ANN202
    return next(n for n in at.sidebar.number_input if n.label.startswith(start))


def test_a_sequential_scan_shows_cells_settled_and_samples_saved_and_marks_them():
    at = app("sensitivity")
    at.sidebar.radio[0].set_value("sequential")
    at = at.run()
    at.sidebar.text_input[0].set_value("0.2, 0.5, 0.8")
    _number(at, "Tolerated drop").set_value(2.0)
    _number(at, "Samples per look").set_value(64)
    at = at.run()
    at.button[0].click()
    at = at.run()
    assert_clean(at)
    [stored] = runs.list_runs(SPEC)
    profile = runs.load_run(stored.run_id)
    assert profile.meta["adaptive"]["shard_size"] == 64 and profile.meta["adaptive"]["tolerance"] == 0.02
    spent = adaptive.sample_evaluations(profile)
    assert spent["settled_early"] > 0
    caption = texts(at.caption)
    assert f"**{spent['settled_early']}** of {spent['cells']} cells settled early" in caption
    assert f"**{spent['saved']:.0%} saved**" in caption
    marks = next(t for t in _figure(at, "drop when one layer is pruned")["data"]
                 if t.get("name") == "settled early (fewer samples)")
    early = profile.table[profile.table[EARLY]]
    assert sorted(zip(marks["y"], marks["x"])) == sorted(zip(early["layer"], (f"{s:g}" for s in early["sparsity"])))
    table = next(d.value for d in at.dataframe if EARLY in d.value.columns)
    assert int(table[EARLY].sum()) == spent["settled_early"]


def test_the_confidence_level_redraws_the_intervals_and_the_ranking(stored_run, sample_profile):  # noqa: F811
    at = app("sensitivity")
    ranking = at.dataframe[0].value
    assert list(ranking["max_sparsity_lo"]) == list(tolerance_table(sample_profile, 0.01)["max_sparsity_lo"])
    band = next(t for t in _figure(at, "drop per layer")["data"] if t.get("fill") == "toself")
    at.sidebar.select_slider[0].set_value(0.99)
    at = at.run()
    assert_clean(at)
    wider = next(t for t in _figure(at, "drop per layer")["data"] if t.get("fill") == "toself")
    assert max(wider["y"]) > max(band["y"]) and "99% intervals" in _figure(at, "drop per layer")["layout"]["title"][
        "text"]
    strict = tolerance_table(sample_profile.with_confidence(0.99), 0.01)
    assert list(at.dataframe[0].value["max_sparsity_lo"]) == list(strict["max_sparsity_lo"])
    assert "at 99% confidence" in texts(at.caption)


def test_the_schedule_summary_shows_the_band_and_warns_within_noise(stored_run, sample_profile):  # noqa: F811
    at = app("schedule")
    slider = next(s for s in at.slider if s.label.startswith("block3.0"))
    slider.set_value(0.3)
    at = at.run()
    assert_clean(at)
    found = Predictor(sample_profile).prediction({"block3.0": 0.3})
    assert found.within_noise
    metric = next(m for m in at.metric if m.label == "predicted accuracy")
    assert metric.value == f"{found.value:.4f}" and metric.help == found.band_text()
    assert found.band_text() in texts(at.caption) and found.warning() in texts(at.warning)
    slider = next(s for s in at.slider if s.label.startswith("block1.0"))
    slider.set_value(0.9)
    at = at.run()
    hurt = Predictor(sample_profile).prediction({"block3.0": 0.3, "block1.0": 0.9})
    assert not hurt.within_noise and hurt.band_text() in texts(at.caption)
    assert "too small for this predicted difference" not in texts(at.warning)
