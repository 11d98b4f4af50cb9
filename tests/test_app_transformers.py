"""The dashboard with a Hugging Face model: a zipped folder and a text file uploaded on the Model & data page, the
page address that keeps them, and a scan on the Sensitivity page with its block views."""

from __future__ import annotations

from pathlib import Path

import hf_models
import pytest
from app_support import assert_clean, hf_workload, plotly_specs, texts

from ui.common import WorkloadSpec, spec_from_address


@pytest.fixture(scope="module")
def gpt2_zip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    folder = hf_models.build("gpt2", tmp_path_factory.mktemp("hf") / "gpt2")
    return hf_models.zipped(folder, {"modeling_gpt2.py": "raise SystemExit('never run')"})


def _hf_workload(gpt2_zip: bytes):  # noqa: ANN202 - AppTest
    return hf_workload(gpt2_zip, hf_models.corpus_text())


def test_a_zipped_hf_folder_and_text_become_the_workload_and_survive_a_reload(gpt2_zip: bytes,
                                                                               prunescope_home: Path) -> None:
    at = _hf_workload(gpt2_zip)
    assert_clean(at)
    spec = at.session_state["workload"]
    folder = Path(spec.model.removeprefix("hf:"))
    assert spec.model.startswith("hf:") and (folder / "config.json").is_file() and not list(folder.glob("*.py"))
    assert spec.data.endswith("upload.txt") and spec.seq_len == 16
    shown = {m.label: m.value for m in at.metric}
    assert shown["prunable layers"] == "8" and shown["vocabulary"] == "300"
    assert "transformer.wte" in " ".join(c.value for c in at.caption)
    address = {k: at.query_params[k] for k in ("model", "data", "count", "size", "seq")}
    assert address["model"].startswith("hf:uploaded:") and address["seq"] == "16"
    assert spec_from_address(address) == spec
    assert spec_from_address({**address, "model": address["model"] + "@nonsense"}) is None
    assert spec_from_address({**address, "model": "hf:/etc"}) is None
    assert spec == WorkloadSpec(spec.model, spec.data, None, 224, 16)


def test_a_scan_of_the_uploaded_model_shows_the_block_views(gpt2_zip: bytes) -> None:
    at = _hf_workload(gpt2_zip)
    at.switch_page("pages/2_Sensitivity.py")
    at = at.run()
    assert_clean(at)
    assert any("Include embeddings" in c.label for c in at.sidebar.checkbox)
    at.sidebar.text_input[0].set_value("0.5")
    at = at.run()
    at.button[0].click()
    at = at.run()
    assert_clean(at)
    assert "perplexity" in [s for s in at.selectbox if s.label == "Metric"][0].options
    heat = [f for f in plotly_specs(at) if "per block and projection" in f["layout"]["title"]["text"]][0]["data"][0]
    assert heat["y"] == ["transformer.h.0", "transformer.h.1"] and heat["x"] == ["qkv", "o", "up", "down"]
    assert not texts(at.error)
