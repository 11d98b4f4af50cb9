"""The Schedule and Export pages with a Hugging Face model: a heads scan of an uploaded GPT-2 on text, a preset on
the Schedule page with its totals, Measure, and a shrunk export whose counts are the totals, all in the task's
words (perplexity, next-token agreement), never a classifier's."""

from __future__ import annotations

import hf_models
import pytest
from app_support import assert_clean, button, export_verified, hf_workload, texts

from analysis.core.granularity import CoupledLayer, schedule_layers
from analysis.schedule.totals import Accountant
from ui.common import cached_workload

CLASSIFIER_WORDS = ("accuracy", "top-1")


@pytest.fixture(scope="module")
def gpt2_zip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return hf_models.zipped(hf_models.build("gpt2", tmp_path_factory.mktemp("hf") / "gpt2"))


def _words(at) -> str:  # noqa: ANN001
    """Everything the page says in words: text, captions, messages, metric labels."""
    shown = [texts(getattr(at, kind)) for kind in ("markdown", "caption", "info", "success", "warning", "error")]
    return "\n".join(shown + [m.label for m in at.metric])


def _heads_scan(gpt2_zip: bytes):  # noqa: ANN202 - AppTest
    """The uploaded GPT-2 on text, scanned by heads on the Sensitivity page."""
    at = hf_workload(gpt2_zip, hf_models.corpus_text())
    at.switch_page("pages/2_Sensitivity.py")
    at = at.run()
    next(s for s in at.sidebar.selectbox if s.label == "Granularity").set_value("heads")
    at.sidebar.text_input[0].set_value("0.25, 0.5")
    at = at.run()
    at.button[0].click()
    at = at.run()
    assert_clean(at)
    return at


def test_a_heads_schedule_of_an_hf_model_is_tuned_measured_and_exported_shrunk(gpt2_zip: bytes) -> None:
    at = _heads_scan(gpt2_zip)
    at.switch_page("pages/4_Schedule.py")
    at = at.run()
    assert_clean(at)
    next(t for t in at.text_input if t.label == "Target value").set_value("0.4")
    button(at, "Apply preset").click()
    at = at.run()
    assert_clean(at)
    values = {k: v for k, v in at.session_state["schedule"]["values"].items() if v > 0}
    assert values and set(values) <= {"transformer.h.0.attn", "transformer.h.1.attn"}
    shown = {m.label: m for m in at.metric}
    kept = int(shown["parameters kept"].proto.help.split()[0].replace(",", ""))
    button(at, "Measure").click()
    at = at.run()
    assert_clean(at)
    assert not any(w in _words(at).lower() for w in CLASSIFIER_WORDS), _words(at)

    at.switch_page("pages/5_Export.py")
    at = at.run()
    assert_clean(at)
    shrink = next(c for c in at.checkbox if c.label.startswith("Shrink"))
    assert not shrink.disabled and shrink.value, "a heads schedule can be shrunk"
    next(c for c in at.checkbox if c.label == "Measure latency").uncheck()
    at, report = export_verified(at)
    assert report.mode == "shrunk" and all(v.passed for v in report.verifications)
    words = _words(at)
    assert "perplexity" in words and "next-token agreement" in words
    assert not any(w in words.lower() for w in CLASSIFIER_WORDS), words
    # the totals the Schedule page showed are the exported file's layer weights
    w = cached_workload(at.session_state["workload"])
    units = [u for u in schedule_layers(w.model, w.data.x[:1], "heads") if isinstance(u, CoupledLayer)]
    assert kept == Accountant(units).totals(values, "heads").params_kept == report.kept["weights"]
    assert report.pruned.weights == report.pruned.nonzero_weights
