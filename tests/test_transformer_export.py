"""Heads and neurons schedules exported shrunk (their units cut out of the weights, the attention told its new head
count), verified in ONNX Runtime against the masked PyTorch model on the eval text; the file's counts tied to the
schedule's totals; refusals that fall back to a masked export; the export's quality in the task's own metrics.
The models are small random-init GPT-2 (fused Conv1D attention), Llama (grouped-query attention, gated MLP) and
BERT built from configs."""

from __future__ import annotations

from pathlib import Path

import hf_models
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from analysis.core.data import IGNORE
from analysis.core.granularity import CoupledLayer, schedule_layers
from analysis.core.metric_table import CAUSAL_LM, ENCODER
from analysis.core.metrics import dense_pass
from analysis.deploy.export import accuracy_line, export, onnx_weights
from analysis.diagnostics.diagnosis import diagnose
from analysis.schedule import units as units_module
from analysis.schedule.schedule import Schedule
from analysis.schedule.totals import Accountant
from analysis.sensitivity.config import ScanConfig
from analysis.workload.workload import load_workload

FAST = dict(measure_latency=False)


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-export")
    folders = {kind: hf_models.build(kind, root / kind) for kind in ("gpt2", "llama", "bert")}
    (root / "text.txt").write_text(hf_models.corpus_text())
    return {**folders, "text": root / "text.txt"}


def workload(hf: dict, kind: str):  # noqa: ANN201 - Workload
    """The model on the eval text, every parameter nudged off zero (random-init biases are zeros, which would
    hide whether the file stores exactly its non-zero parameters)."""
    w = load_workload(f"hf:{hf[kind]}", str(hf["text"]), seq_len=16)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in w.model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return w


def file_arrays(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


CASES = [("gpt2", "heads"), ("gpt2", "neurons"), ("llama", "heads"), ("llama", "neurons"), ("bert", "heads")]


@pytest.mark.parametrize("kind,gran", CASES)
def test_a_shrunk_export_cuts_the_units_out_and_its_counts_are_the_totals(hf: dict, tmp_path: Path, kind: str,
                                                                            gran: str) -> None:
    w = workload(hf, kind)
    units = [u for u in schedule_layers(w.model, w.data.x[:1], gran) if isinstance(u, CoupledLayer)]
    schedule = Schedule({units[0].name: 0.5, units[1].name: 0.25}, granularity=gran)
    out = tmp_path / f"{kind}-{gran}.onnx"
    report = export(w.model, schedule, w.data, out, shrink_channels=True, **FAST)

    assert report.mode == "shrunk" and not report.notes
    assert [v.reference for v in report.verifications][-1] == "masked reference"
    assert all(v.passed and v.samples == len(w.data) for v in report.verifications[::2])  # every eval window
    # the units are gone from the file: each part keeps the rows or columns of the units left (the weights are found
    # by name, or where the exporter folded a transpose into them by position and shape), and nothing is zero
    expected = {}
    for unit, share in zip(units, (0.5, 0.25)):
        left = unit.shape[0] - round(share * unit.shape[0])
        for part in unit.parts:
            expected[part.layer.name] = list(part.layer.shape)
            expected[part.layer.name][part.axis] = part.index[:left].numel()
    parts = [p.layer for u in units for p in u.parts]
    found = onnx_weights(out, parts, {p.name: tuple(expected.get(p.name, p.shape)) for p in parts})
    assert sorted(found) == sorted(p.name for p in parts)
    arrays = file_arrays(out)
    tensors = [a for a in arrays.values() if np.issubdtype(a.dtype, np.floating) and a.ndim > 0]
    assert report.pruned.params == sum(a.size for a in tensors) == report.pruned.nonzero_params
    # the numbers the Schedule page shows for this schedule are the file's
    totals = Accountant(units).totals(schedule)
    assert totals.params_kept == sum(a.size for a in found.values()) == report.kept["weights"]
    assert totals.weights == report.kept["weights_total"] and totals.flops_kept == report.kept["flops"]


def test_grouped_query_attention_loses_a_key_value_group_with_its_query_heads(hf: dict, tmp_path: Path) -> None:
    w = workload(hf, "llama")  # 4 query heads of 8 sharing 2 key/value heads: a unit is one group
    units = [u for u in schedule_layers(w.model, w.data.x[:1], "heads") if isinstance(u, CoupledLayer)]
    assert units[0].shape[0] == 2
    out = tmp_path / "llama.onnx"
    report = export(w.model, Schedule({units[0].name: 0.5}, granularity="heads"), w.data, out, shrink_channels=True,
                    **FAST)
    shapes = {"q_proj": (16, 32), "k_proj": (8, 32), "v_proj": (8, 32), "o_proj": (32, 16)}  # (out, in)
    parts = {p.layer.name.rpartition(".")[2]: p.layer for p in units[0].parts}
    found = onnx_weights(out, list(parts.values()), {parts[k].name: v for k, v in shapes.items()})
    assert {k: found[parts[k].name].shape for k in shapes} == shapes
    assert report.mode == "shrunk" and all(v.passed for v in report.verifications)


def test_a_block_that_would_lose_every_head_is_exported_masked_with_the_reason(hf: dict, tmp_path: Path) -> None:
    w = workload(hf, "gpt2")
    units = [u for u in schedule_layers(w.model, w.data.x[:1], "heads") if isinstance(u, CoupledLayer)]
    schedule = Schedule({units[0].name: 0.9}, granularity="heads")  # 4 heads: all of them
    report = export(w.model, schedule, w.data, tmp_path / "gpt2.onnx", shrink_channels=True, **FAST)
    assert report.mode == "masked" and all(v.passed for v in report.verifications)
    assert [n for n in report.notes if n.startswith("not shrunk")] == [
        f"not shrunk, exported masked: the schedule removes every unit of {units[0].name}; a block without heads "
        "or neurons cannot be cut out"]
    totals = Accountant(units).totals(schedule)
    assert totals.params_kept == report.kept["weights"]  # masked: the non-zero weights of the same layers


def test_attention_code_that_reads_a_fixed_head_count_is_refused_and_exported_masked(hf: dict, tmp_path: Path,
                                                                                     monkeypatch) -> None:
    monkeypatch.setattr(units_module, "HEAD_COUNTS", ())  # GPT-2's split_size is not updated: its split fails
    w = workload(hf, "gpt2")
    units = [u for u in schedule_layers(w.model, w.data.x[:1], "heads") if isinstance(u, CoupledLayer)]
    report = export(w.model, Schedule({units[0].name: 0.5}, granularity="heads"), w.data, tmp_path / "g.onnx",
                    shrink_channels=True, **FAST)
    assert report.mode == "masked" and all(v.passed for v in report.verifications)
    refused = [n for n in report.notes if n.startswith("not shrunk")]
    assert len(refused) == 1 and "attention code" in refused[0] and "\n" not in refused[0]


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_the_export_speaks_the_task_s_metrics(hf: dict, tmp_path: Path, kind: str) -> None:
    w = workload(hf, kind)
    units = [u for u in schedule_layers(w.model, w.data.x[:1], "neurons") if isinstance(u, CoupledLayer)]
    report = export(w.model, Schedule({units[0].name: 0.5}, granularity="neurons"), w.data, tmp_path / "m.onnx",
                    **FAST)
    q, line, summary = report.quality, accuracy_line(report.quality), report.to_markdown()
    assert "accuracy" not in line.lower() and "top-1" not in line and "top-1" not in summary
    _, baseline = dense_pass(w.model, w.data.x, w.data.y, task=w.data.task)
    if kind == "gpt2":
        assert q["task"] == CAUSAL_LM and q["dense_accuracy"] is None
        # perplexity as a scan measures it: over the real next-token positions
        assert q["predictions"] == int((w.data.y != IGNORE).sum()) == baseline.n
        assert q["dense_perplexity"] == pytest.approx(baseline.metrics()["perplexity"], rel=1e-6)
        assert 0 <= q["agreement"] <= 1
        assert "perplexity: dense" in line and "next-token agreement with dense" in line
    else:
        assert q["task"] == ENCODER and q["agreement"] is None and q["predictions"] == len(w.data)
        assert 0 < q["embedding_cosine"] <= 1 + 1e-9 and "embedding cosine to dense" in line


def test_dead_units_of_a_sequence_output_are_counted_per_feature(hf: dict) -> None:
    w = workload(hf, "gpt2")  # c_fc's output is (windows, positions, 128 neurons)
    result = diagnose(w, ScanConfig(layers=("transformer.h.0.mlp.c_fc",), sparsities=(0.5,), granularity="channel",
                                    criterion="l1", batch_size=8), recalibration=False)
    rows = result.dead[(result.dead["observed"] == "transformer.h.0.mlp.c_fc") & (result.dead["kind"] == "structural")]
    assert len(rows) == 1
    row = rows.iloc[0]
    assert row["units"] == 128 and row["dead_before"] == 0 and row["dead_after"] == 64  # features, not positions
