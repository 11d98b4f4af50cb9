"""Honest predictions: never better than dense, never below chance, no gain from noise, a band from the profile's
counts with a warning when the eval set is too small, and a calibration used only when it predicts better."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis.core.profile import SensitivityProfile
from analysis.schedule.predict import MODELS, Predictor, calibration_verdict
from analysis.schedule.schedule import Schedule
from tests.conftest import run_cli

N, DENSE = 449, 400  # samples, dense correct


def counted_profile(cells: dict[str, list[tuple[float, int, int]]]) -> SensitivityProfile:
    """A profile from paired counts: per layer, (sparsity, lost, gained) cells on N samples (10 classes)."""
    rows = []
    for layer, points in cells.items():
        for s, lost, gained in [(0.0, 0, 0), *points]:
            correct = DENSE - lost + gained
            rows.append({"layer": layer, "type": "Linear", "sparsity": s, "params": 100, "flops": 100,
                         "accuracy": correct / N, "loss": 0.3, "agreement": 1 - (lost + gained) / N, "kl": 0.0,
                         "n": N, "correct": correct, "agree": N - lost - gained, "lost": lost, "gained": gained,
                         "loss_sum": 0.3 * N, "kl_sum": 0.0})
    meta = {"baseline": {"accuracy": DENSE / N, "loss": 0.3, "agreement": 1.0, "kl": 0.0}, "num_classes": 10,
            "samples": N, "labelled": True}
    return SensitivityProfile(pd.DataFrame(rows), meta).with_confidence()


def test_never_better_than_dense_and_never_below_chance(workloads):
    from analysis.sensitivity.config import ScanConfig
    from analysis.sensitivity.driver import scan

    profile = scan(workloads["digits-cnn"], ScanConfig(sparsities=(0.3, 0.6, 0.9)))
    rng = np.random.default_rng(0)
    schedules = [{name: float(rng.choice([0.0, 0.3, 0.5, 0.6, 0.9, 0.97])) for name in profile.layers}
                 for _ in range(40)]
    dense = profile.baseline("accuracy")
    for model in MODELS:
        predictor = Predictor(profile, model=model, power=0.6)
        values = [predictor.predict(s) for s in schedules]
        assert all(0.1 <= v <= dense for v in values), model
        assert min(values) == pytest.approx(0.1) or model != "additive"  # pruned hard everywhere: chance, not less
    loss = Predictor(profile, "loss")
    assert all(loss.predict(s) >= profile.baseline("loss") for s in schedules)


def test_a_gain_within_noise_counts_nothing_a_real_gain_counts_but_never_past_dense():
    profile = counted_profile({"noisy": [(0.5, 0, 1)], "hurt": [(0.5, 90, 0)], "helps": [(0.5, 0, 40)]})
    drops = profile.drop("accuracy").set_index(["layer", "sparsity"])
    assert drops.loc[("noisy", 0.5), "drop"] < 0 <= drops.loc[("noisy", 0.5), "drop_hi"]  # a gain within noise
    assert drops.loc[("helps", 0.5), "drop_hi"] < 0  # a gain the eval set can tell from zero
    predictor, dense = Predictor(profile), DENSE / N
    assert predictor.predict({"noisy": 0.5}) == pytest.approx(dense)
    assert predictor.predict({"noisy": 0.5, "hurt": 0.5}) == pytest.approx(dense - 90 / N)
    assert predictor.predict({"hurt": 0.5, "helps": 0.5}) == pytest.approx(dense - 90 / N + 40 / N)
    assert predictor.predict({"helps": 0.5}) == pytest.approx(dense)  # measured better, predicted no better


def test_the_band_is_the_layers_intervals_added_and_says_when_it_holds_dense():
    profile = counted_profile({"a": [(0.5, 3, 1)], "b": [(0.5, 30, 2)], "c": [(0.5, 60, 0)]})
    drops = profile.drop("accuracy").set_index(["layer", "sparsity"])
    dense = DENSE / N
    both = Predictor(profile).prediction({"b": 0.5, "c": 0.5})  # the numbers sensitivity.csv shows, added
    assert both.lo == pytest.approx(dense - drops.loc[("b", 0.5), "drop_hi"] - drops.loc[("c", 0.5), "drop_hi"])
    assert both.hi == pytest.approx(dense - drops.loc[("b", 0.5), "drop_lo"] - drops.loc[("c", 0.5), "drop_lo"])
    assert both.lo < both.value < both.hi and not both.within_noise and both.warning() is None
    half = Predictor(profile).prediction({"b": 0.25})  # between measured sparsities: the ends interpolated
    assert half.hi == pytest.approx(dense - drops.loc[("b", 0.5), "drop_lo"] / 2)
    small = Predictor(profile).prediction({"a": 0.5})
    assert small.within_noise and small.value < dense
    assert f"the eval set ({N} samples) is too small" in small.warning()
    assert small.recorded()["band"] == [small.lo, small.hi] and small.recorded()["confidence"] == 0.95


def test_a_profile_without_error_bar_sums_predicts_without_a_band(tmp_path):
    profile = counted_profile({"a": [(0.5, 30, 2)]})
    old = profile.table.drop(columns=[c for c in profile.table if c.endswith(("_lo", "_hi"))] +
                             ["lost", "gained"])
    SensitivityProfile(old, profile.meta).save(tmp_path)
    reopened = SensitivityProfile.load(tmp_path)
    accuracy = Predictor(reopened).prediction({"a": 0.5})
    assert accuracy.has_band and accuracy.lo < accuracy.value < accuracy.hi  # from the counts (unpaired)
    loss = Predictor(reopened, "loss").prediction({"a": 0.5})
    assert not loss.has_band and "no band" in loss.warning()


@pytest.mark.parametrize("loo, additive, used", [(0.02, 0.03, True), (0.03, 0.02, False), (0.02, 0.02, False)])
def test_a_calibration_is_used_only_when_its_leave_one_out_error_beats_additive(loo, additive, used):
    profile = counted_profile({"a": [(0.5, 30, 2)], "b": [(0.5, 60, 0)]})
    calibration = {"metric": "accuracy", "model": "calibrated", "power": 0.5, "stage": "pruned", "schedules": 6,
                   "mae": {"additive": additive, "multiplicative": 0.1, "calibrated": loo}}
    predictor = Predictor.from_profile(profile, calibration)
    assert (predictor.model == "calibrated") == used == calibration_verdict(calibration)[0]
    assert f"{loo:.4f}" in predictor.reason and f"{additive:.4f}" in predictor.reason
    assert predictor.reason.startswith("calibrated" if used else "additive")
    assert predictor.prediction({"a": 0.5}).reason == predictor.reason
    assert not calibration_verdict({**calibration, "mae": {}})[0]


def test_the_schedule_command_prints_the_band_and_why_its_model(workloads, tmp_path):
    from analysis.sensitivity.config import ScanConfig
    from analysis.sensitivity.driver import scan

    scan(workloads["digits-mlp"], ScanConfig(sparsities=(0.3, 0.6, 0.9))).save(tmp_path / "scan")
    from analysis.cli.folders import scan_fingerprint

    (tmp_path / "scan" / "calibration.json").write_text(json.dumps({
        "metric": "accuracy", "model": "calibrated", "power": 0.5, "stage": "pruned", "schedules": 4,
        "mae": {"additive": 0.01, "calibrated": 0.05}, "scan": scan_fingerprint(tmp_path / "scan")}))
    done = run_cli("schedule", "--scan", tmp_path / "scan", "--target-sparsity", "0.3", "--method", "uniform",
                   "--out", tmp_path / "s.json", "--no-store")
    assert done.returncode == 0, done.stderr
    recorded = Schedule.load(tmp_path / "s.json").meta["predicted"]
    lo, hi = recorded["band"]
    assert f"predicted accuracy {recorded['accuracy']:.4f} (95% band {lo:.4f} to {hi:.4f}; pruned)" in done.stdout
    assert "prediction model additive: the calibration's leave-one-out error 0.0500 does not beat" in done.stdout
    assert recorded["model"] == "additive" and "warning: the eval set (449 samples) is too small" in done.stdout
