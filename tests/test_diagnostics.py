"""Diagnostics: activation shift, dead neurons, BatchNorm recalibration, criterion comparison, the CLI."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from torch import nn

from analysis.core import batchnorm, masks
from analysis.core.data import EvalData
from analysis.core.layers import find_layers
from analysis.diagnostics.compare import compare_criteria
from analysis.diagnostics.diagnosis import LOGITS, diagnose, structural_dead
from analysis.report.plots import (
    activation_shift_figure,
    criterion_comparison_figure,
    dead_neurons_figure,
    recalibration_figure,
)
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import prepare
from analysis.sensitivity.driver import scan
from analysis.workload.workload import Workload, load_workload

SMALL = ScanConfig(batch_size=64)


def _workload(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, classes: int = 4) -> Workload:
    return Workload(model.eval(), EvalData(x, y, "hand-made"), "hand-made", classes, tuple(x.shape[1:]))


class Branchy(nn.Module):
    """stem -> conv1 -> BN -> ReLU -> depthwise -> BN [+ stem output] -> ReLU -> depthwise 1x1 -> pool -> fc."""

    def __init__(self, residual: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.residual = residual
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.after = nn.Conv2d(8, 8, 1, groups=8)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():  # channels 1, 3, 4, 6 of conv1 are the weakest: 50% channel pruning removes them
            self.conv1.weight[[1, 3, 4, 6]] *= 0.01

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        y = self.bn2(self.dw(F.relu(self.bn1(self.conv1(h)))))
        if self.residual:
            y = y + h
        z = self.after(F.relu(y))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(z, 1), 1))


def _dead(result, observed: str, kind: str = "structural") -> pd.Series:
    rows = result.dead[(result.dead["observed"] == observed) & (result.dead["kind"] == kind)]
    assert len(rows) == 1
    return rows.iloc[0]


def _ids(text: str) -> list[int]:
    return [int(t) for t in str(text).split()] if isinstance(text, str) else []


@pytest.mark.parametrize("residual", [False, True])
def test_channel_pruning_kills_exactly_those_channels_and_follows_the_graph(residual: bool) -> None:
    x = torch.randn(24, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    result = diagnose(_workload(Branchy(residual), x),
                      ScanConfig(layers=("conv1",), sparsities=(0.5,), granularity="channel", batch_size=8))
    pruned = [1, 3, 4, 6]
    own = _dead(result, "conv1")
    assert (own["dead_before"], own["dead_after"], own["units"]) == (0, 4, 8)
    assert _ids(own["indices_after"]) == pruned
    # The depthwise conv reads one channel each, through BatchNorm and ReLU: the same channels lose their input.
    assert _ids(_dead(result, "dw")["indices_after"]) == pruned
    # After the residual add the stem's output keeps those channels alive; without it they stay dead.
    after = _dead(result, "after")
    assert _ids(after["indices_after"]) == ([] if residual else pruned)
    assert _dead(result, "fc")["dead_after"] == 0
    # Structurally dead channels are functionally dead too (constant on every sample).
    assert set(_ids(_dead(result, "conv1", "functional")["indices_after"])) >= set(pruned)
    assert set(_ids(_dead(result, "dw", "functional")["indices_created"])) >= set(pruned)


def test_a_linear_unit_that_loses_all_its_inputs_is_dead() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight[[0, 2]] *= 0.01  # the two weakest rows
        model[2].weight.copy_(torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0])))  # unit j reads input j only
    layers = find_layers(model, torch.randn(1, 6))
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[[0, 2]] = False
    with masks.applied(model, {"0.weight": mask}):
        dead = structural_dead(model, layers, torch.randn(1, 6))
    assert dead["0"].nonzero().flatten().tolist() == [0, 2]
    assert dead["2"].nonzero().flatten().tolist() == [0, 2]
    assert not dead["4"].any()
    assert not any(v.any() for v in structural_dead(model, layers, torch.randn(1, 6)).values())


def test_functional_dead_units_are_counted_before_pruning() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        model[0].bias[2] = -1e3  # ReLU(that) is 0 on every sample
    x = torch.randn(40, 5)
    result = diagnose(_workload(model, x, classes=3), ScanConfig(layers=("0",), sparsities=(0.3,), batch_size=16))
    row = _dead(result, "0", "functional")
    assert _ids(row["indices_before"]) == [2]
    assert row["zero_before"] == 1
    assert _dead(result, "0")["dead_before"] == 0  # its weights are not zero: not structurally dead


def test_sparsity_zero_gives_no_shift(workloads) -> None:
    w = workloads["digits-resnet"]
    small = Workload(w.model, EvalData(w.data.x[:64], w.data.y[:64], "digits[:64]"), w.model_spec, 10, w.input_shape)
    result = diagnose(small, ScanConfig(layers=("layer1.conv1",), sparsities=(0.0,), batch_size=32), recalibration=False)
    shift = result.shift
    assert list(shift["observed"]) == ["layer1.conv1", "layer1.conv2", "layer2.downsample.0", "layer2.conv1",
                                       "layer2.conv2", "fc", LOGITS]
    for col in ("rel_l2", "mean_shift", "mean_shift_max", "std_shift", "std_shift_max", "hellinger", "hellinger_max"):
        assert (shift[col] == 0).all(), col
    for col in ("cosine", "cosine_worst_decile", "cosine_min"):
        assert (shift[col] == 1).all(), col
    assert (result.dead["created"] == 0).all()


def test_logit_statistics_match_a_direct_computation(workloads) -> None:
    w = workloads["digits-mlp"]
    x = w.data.x[:100]
    small = Workload(w.model, EvalData(x, None, "digits[:100]"), w.model_spec, 10, w.input_shape)
    config = ScanConfig(layers=("fc2",), sparsities=(0.8,), batch_size=32)
    result = diagnose(small, config)
    row = result.shift[result.shift["observed"] == LOGITS].iloc[0]
    ctx = prepare(small, config)
    layer = ctx.layers[0]
    mask = ctx.masks_for(layer)[ctx.config.sparsities.index(0.8)]
    with torch.no_grad():
        dense = w.model(x).double()
        with masks.applied(w.model, {layer.param_name: mask}):
            pruned = w.model(x).double()
    cos = F.cosine_similarity(dense, pruned, dim=1)
    assert row["rel_l2"] == pytest.approx(float((pruned - dense).norm() / dense.norm()), rel=1e-9)
    assert row["cosine"] == pytest.approx(float(cos.mean()), abs=1e-9)
    assert row["cosine_min"] == pytest.approx(float(cos.min()), abs=1e-9)
    worst = cos.sort().values[:10].mean()  # 10% of 100 samples
    assert 1 - row["cosine_worst_decile"] == pytest.approx(float(1 - worst), rel=0.05)
    shift = (pruned.mean(0) - dense.mean(0)).abs() / dense.std(0, unbiased=False)
    assert row["mean_shift"] == pytest.approx(float(shift.mean()), rel=1e-6)
    assert row["mean_shift_max"] == pytest.approx(float(shift.max()), rel=1e-6)
    assert 0 < row["hellinger"] <= row["hellinger_max"] <= 1
    assert row["samples"] == 100 and row["channels"] == 10


def test_statistics_do_not_depend_on_the_batch_size(workloads) -> None:
    w = workloads["digits-cnn"]
    small = Workload(w.model, EvalData(w.data.x[:96], w.data.y[:96], "digits[:96]"), w.model_spec, 10, w.input_shape)
    a = diagnose(small, ScanConfig(layers=("block2.0",), sparsities=(0.6,), batch_size=96), recalibration=False)
    b = diagnose(small, ScanConfig(layers=("block2.0",), sparsities=(0.6,), batch_size=20), recalibration=False)
    numeric = [c for c in a.shift.columns if c not in ("layer", "observed")]
    pd.testing.assert_frame_equal(a.shift[numeric], b.shift[numeric], rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(a.dead, b.dead)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_torchscript_model_gives_the_same_diagnosis(workloads) -> None:
    w = workloads["digits-cnn"]
    x = w.data.x[:48]
    config = ScanConfig(layers=("block1.0",), sparsities=(0.5,), granularity="channel", batch_size=16)
    eager = diagnose(Workload(w.model, EvalData(x, None, "d"), "eager", 10, w.input_shape), config, recalibration=False)
    scripted_model = torch.jit.trace(w.model, x[:2])
    scripted = diagnose(Workload(scripted_model, EvalData(x, None, "d"), "ts", 10, w.input_shape), config,
                        recalibration=False)
    cols = ["observed", "rel_l2", "cosine", "mean_shift"]
    pd.testing.assert_frame_equal(eager.shift[cols], scripted.shift[cols], rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(eager.dead, scripted.dead)
    assert _dead(scripted, "block1.0")["dead_after"] == 8


def _fresh(name: str, count: int | None = None) -> Workload:
    return load_workload(f"sample:{name}", "sample:digits", count=count)


def test_recalibration_on_the_dense_model_changes_nothing() -> None:
    w = _fresh("digits-cnn")
    config = ScanConfig(layers=("block2.0",), sparsities=(0.0,), batch_size=64, bn_batches=4)
    # Give the model the statistics that recalibration itself estimates on this data.
    batchnorm.recalibrate(w.model, w.data.x, config.bn_batches, config.batch_size)
    state = {k: v.clone() for k, v in w.model.state_dict().items()}
    row = diagnose(w, config).recalibration.iloc[0]
    assert row["recalibrated"] == row["pruned"] == row["dense"]
    assert row["loss_recalibrated"] == pytest.approx(row["loss_pruned"], abs=1e-5)
    assert row["kl_recalibrated"] == pytest.approx(0.0, abs=1e-6)
    for k, v in w.model.state_dict().items():
        assert torch.equal(v, state[k]), k  # the model comes back bit for bit


def test_recalibration_recovers_part_of_the_drop_on_a_pruned_sample() -> None:
    w = _fresh("digits-resnet")
    result = diagnose(w, ScanConfig(layers=("layer1.conv1",), sparsities=(0.5,), granularity="channel"))
    row = result.recalibration.iloc[0]
    print(f"\ndigits-resnet layer1.conv1 @ 50% channels: accuracy dense {row['dense']:.4f}, pruned {row['pruned']:.4f}, "
          f"recalibrated {row['recalibrated']:.4f} (recovered {row['recovered']:.1%} of the drop)")
    assert row["pruned"] < row["dense"]
    assert row["recalibrated"] > row["pruned"]
    assert row["loss_recalibrated"] < row["loss_pruned"]
    assert 0 < row["recovered"] <= 1.05


def test_recalibration_does_not_apply_without_batchnorm(workloads) -> None:
    result = diagnose(workloads["digits-mlp"], ScanConfig(layers=("fc1",), sparsities=(0.5,)))
    assert result.recalibration.empty
    assert result.summary["recalibration"]["applies"] is False
    assert "does not apply" in result.summary["recalibration"]["reason"]


def test_scan_with_recalibration_measures_the_profile_the_other_way() -> None:
    w = _fresh("digits-cnn", count=128)
    state = {k: v.clone() for k, v in w.model.state_dict().items()}
    base = ScanConfig(layers=("block1.0", "block3.0"), sparsities=(0.5,), granularity="channel", batch_size=64)
    plain = scan(w, base).table
    recal = scan(w, ScanConfig(**{**base.__dict__, "bn_recalibrate": True, "bn_batches": 2})).table
    dense_rows = plain["sparsity"] == 0
    pd.testing.assert_frame_equal(plain[dense_rows], recal[dense_rows])
    assert (plain.loc[~dense_rows, "loss"].to_numpy() != recal.loc[~dense_rows, "loss"].to_numpy()).all()
    assert (recal.loc[~dense_rows, "loss"].to_numpy() < plain.loc[~dense_rows, "loss"].to_numpy()).any()
    for k, v in w.model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_scan_with_recalibration_on_a_model_without_batchnorm_equals_the_plain_scan(workloads) -> None:
    config = ScanConfig(layers=("fc2",), sparsities=(0.5, 0.9))
    plain = scan(workloads["digits-mlp"], config).table
    recal = scan(workloads["digits-mlp"], ScanConfig(**{**config.__dict__, "bn_recalibrate": True})).table
    pd.testing.assert_frame_equal(plain, recal)


def test_bn_batches_must_be_positive() -> None:
    with pytest.raises(ValueError, match="bn_batches=0"):
        ScanConfig(bn_batches=0).validated()


def test_criteria_side_by_side_and_the_figures(workloads) -> None:
    w = workloads["digits-mlp"]
    profiles = [scan(w, ScanConfig(criterion=c, layers=("fc1", "fc2"), sparsities=(0.5, 0.9))) for c in ("magnitude", "random")]
    table = compare_criteria(profiles)
    assert list(table.columns) == ["layer", "sparsity", "magnitude", "random", "best", "spread"]
    assert len(table) == 2 * 3
    assert (table[table["sparsity"] == 0][["magnitude", "random"]] == 0).all().all()
    high = table[table["sparsity"] == 0.9]
    assert (high["random"] > high["magnitude"]).all()  # a criterion worth using beats the random control
    assert (high["best"] == "magnitude").all()
    fig = criterion_comparison_figure(table)
    assert {t.name for t in fig.data} == {"magnitude", "random"}
    with pytest.raises(ValueError, match="at least two"):
        compare_criteria(profiles[:1])
    with pytest.raises(ValueError, match="do not differ"):
        compare_criteria([profiles[0], profiles[0]])


def test_diagnostic_figures(workloads) -> None:
    w = _fresh("digits-cnn", count=64)
    result = diagnose(w, ScanConfig(layers=("block2.0",), sparsities=(0.5,), granularity="channel"))
    assert len(activation_shift_figure(result.shift).data) == 1
    assert len(activation_shift_figure(result.shift, "cosine").data[0].x) == 4  # block2.0, block3.0, fc, logits
    fig = dead_neurons_figure(result.dead)
    assert {t.name for t in fig.data} == {"dense", "pruned"}
    assert len(recalibration_figure(result.recalibration).data) == 2
    with pytest.raises(ValueError, match="unknown activation-shift statistic"):
        activation_shift_figure(result.shift, "nope")


def test_cli_diagnose_writes_the_tables(tmp_path) -> None:
    out = tmp_path / "diag"
    proc = run_cli("diagnose", "--model", "sample:digits-cnn", "--data", "sample:digits", "--count", "64",
                   "--layer", "all", "--sparsity", "0.5", "--granularity", "channel", "--bn-batches", "2", "--out", out)
    assert proc.returncode == 0, proc.stderr
    shift = pd.read_csv(out / "activation_shift.csv")
    dead = pd.read_csv(out / "dead_neurons.csv")
    assert {"layer", "sparsity", "observed", "cosine", "rel_l2", "hellinger"} <= set(shift.columns)
    assert set(shift["layer"]) == {"block1.0", "block2.0", "block3.0", "fc"}
    assert set(dead["kind"]) == {"structural", "functional"}
    summary = json.loads((out / "diagnose.json").read_text())
    assert summary["recalibration"]["applies"] is True and len(summary["cells"]) == 4
    assert math.isclose(summary["sparsities"][0], 0.5)
    assert "block1.0 @ 0.5" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--layer", "nope", "--sparsity", "0.5"], "unknown layer 'nope'"),
    (["--layer", "fc", "--sparsity", "0.5", "--bn-batches", "0"], "bn_batches=0"),
    (["--layer", "fc", "--sparsity", "0.5", "--calib-data", "random:3x8x8"], "--calib-data random:3x8x8 has inputs"),
])
def test_cli_diagnose_rejects_bad_input(tmp_path, args: list[str], message: str) -> None:
    proc = run_cli("diagnose", "--model", "sample:digits-mlp", "--data", "sample:digits", "--count", "32", *args,
                   "--out", tmp_path / "d")
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_cli_scan_bn_recalibrate(tmp_path) -> None:
    proc = run_cli("scan", "--model", "sample:digits-mlp", "--data", "sample:digits", "--count", "32", "--layers", "fc1",
                   "--sparsities", "0.5", "--bn-recalibrate", "--quiet", "--out", tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    assert "does not apply" in proc.stderr
    meta = json.loads((tmp_path / "s" / "scan.json").read_text())
    assert meta["config"]["bn_recalibrate"] is True


def test_attention_projections_are_observed_themselves() -> None:
    """``nn.MultiheadAttention``'s fused inference kernel reads both projections inside one operator; the
    diagnosis runs the decomposed path, so each projection's own output is measured (distance 0)."""
    from analysis.sensitivity.config import ScanConfig
    from analysis.workload.data import load_data
    from analysis.workload.workload import Workload

    class Attend(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.embed, self.attn, self.head = nn.Linear(8, 16), nn.MultiheadAttention(16, 2, batch_first=True), \
                nn.Linear(16, 10)

        def forward(self, x):
            h = self.embed(x.flatten(1, 2))
            return self.head((h + self.attn(h, h, h, need_weights=False)[0]).mean(1))

    wl = Workload(Attend().eval(), load_data("sample:digits", count=32), "attend", 10, (1, 8, 8))
    for layer in ("attn.in_proj", "attn.out_proj"):
        shift = diagnose(wl, ScanConfig(sparsities=(0.5,), layers=(layer,)), recalibration=False).shift
        own = shift[shift["observed"] == layer]
        assert len(own) == 1 and int(own["distance"].iloc[0]) == 0 and float(own["rel_l2"].iloc[0]) > 0
    assert torch.backends.mha.get_fastpath_enabled()  # the flag came back
