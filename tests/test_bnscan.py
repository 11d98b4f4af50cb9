"""The fast engine with BatchNorm recalibration gives the naive engine's numbers (same counts, losses within 1e-5)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from test_fast_engine import assert_same, compare, random_workload
from torch import nn

from analysis.sensitivity import bnscan
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import combine_shards, prepare
from analysis.sensitivity.engines import run_layer_fast
from analysis.sensitivity.naive import run_layer_naive
from analysis.workload.workload import load_workload

RECAL = {"bn_recalibrate": True, "bn_batches": 2, "batch_size": 32}


@pytest.fixture(scope="module")
def digits() -> dict:
    return {name: load_workload(f"sample:{name}", "sample:digits", count=150) for name in ("digits-resnet", "digits-cnn")}


@pytest.fixture
def naive_fallbacks(monkeypatch) -> list[str]:
    """The layers the recalibrating fast engine handed to the naive engine."""
    calls: list[str] = []
    real = bnscan.run_layer_naive

    def spy(ctx, layer, *rest):
        calls.append(layer.name)
        return real(ctx, layer, *rest)

    monkeypatch.setattr(bnscan, "run_layer_naive", spy)
    return calls


@pytest.mark.parametrize("name", ["digits-resnet", "digits-cnn"])
def test_samples_match_naive_with_recalibration(digits, name, naive_fallbacks):
    report = compare(digits[name], sparsities=(0.3, 0.6, 0.9), **RECAL)
    assert report["used"] == "fast" and not report["notices"] and "bn_recalibrate" in report
    assert naive_fallbacks == []


def test_recalibration_changes_the_numbers(digits):
    """The recalibrated scan is not the plain one, also after the last BatchNorm (the prefix is recalibrated)."""
    plain = prepare(digits["digits-resnet"], ScanConfig(sparsities=(0.6,), batch_size=32))
    recal = prepare(digits["digits-resnet"], ScanConfig(sparsities=(0.6,), **RECAL))
    for name in ("stem.0", "fc"):
        a = run_layer_fast(plain, next(l for l in plain.layers if l.name == name)).rows[1]
        b = run_layer_fast(recal, next(l for l in recal.layers if l.name == name)).rows[1]
        assert a["loss_sum"] != pytest.approx(b["loss_sum"], rel=1e-4), name


def test_resnet18_channel_granularity_matches_naive_with_recalibration(naive_fallbacks):
    torch.manual_seed(0)
    workload = random_workload(torchvision.models.resnet18(), (3, 32, 32), n=24)
    for granularity in ("unstructured", "channel"):
        report = compare(workload, layers_every=5, sparsities=(0.3, 0.9), granularity=granularity,
                         bn_recalibrate=True, bn_batches=2, batch_size=8)
        assert report["used"] == "fast"
    assert naive_fallbacks == []


def test_shards_add_up_to_the_naive_whole_set(digits):
    """Recalibration uses the whole eval set's first batches, whatever the shard."""
    ctx = prepare(digits["digits-resnet"], ScanConfig(sparsities=(0.5, 0.9), chunk_size=20, **RECAL))
    for layer in reversed(ctx.layers):
        parts = [run_layer_fast(ctx, layer, shard) for shard in [(0, 61), (61, 150)]]
        assert_same(run_layer_naive(ctx, layer).rows, combine_shards(parts).rows, layer.name)


def test_a_mask_removing_nothing_measures_the_recalibrated_dense_model(digits):
    ctx = prepare(digits["digits-cnn"], ScanConfig(**RECAL))
    layer = ctx.layers[0]
    wanted = (0.0, 0.001, 0.5)
    fast, naive = run_layer_fast(ctx, layer, None, wanted), run_layer_naive(ctx, layer, None, wanted)
    assert fast.rows[1]["actual_sparsity"] == 0.0
    assert fast.rows[1]["loss_sum"] != pytest.approx(fast.rows[0]["loss_sum"], rel=1e-4)
    assert_same(naive.rows, fast.rows, layer.name)


def test_statistics_and_modes_are_restored(digits):
    ctx = prepare(digits["digits-resnet"], ScanConfig(sparsities=(0.7,), **RECAL))
    bns = [m for m in ctx.model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone(), m.momentum, m.training) for m in bns]
    for layer in ctx.layers:
        run_layer_fast(ctx, layer)
    for m, (mean, var, momentum, training) in zip(bns, before):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert (m.momentum, m.training) == (momentum, training)


def test_model_without_batchnorm_takes_the_normal_path():
    workload = load_workload("sample:digits-mlp", "sample:digits", count=64)
    report = compare(workload, sparsities=(0.5,), **RECAL)
    assert report["used"] == "fast" and "bn_recalibrate" not in report


class HiddenNorm(nn.Module):
    """A BatchNorm whose buffers the graph reads directly (``F.batch_norm``): not followed, naive instead."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.b = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.batch_norm(self.a(x), self.bn.running_mean, self.bn.running_var, self.bn.weight,
                                     self.bn.bias)
        return self.b(h)


def test_batchnorm_read_by_functions_falls_back_to_naive():
    report = compare(random_workload(HiddenNorm(), (4,)), sparsities=(0.5,), **RECAL)
    assert report["used"] == "naive" and "reads bn.weight of a BatchNorm" in report["notices"][0]
