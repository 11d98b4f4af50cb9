"""The fast engine gives the naive engine's numbers: same counts per (layer, sparsity), losses within 1e-5."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from conftest import run_cli
from torch import nn

from analysis.core.batchnorm import recalibrate
from analysis.core.data import EvalData
from analysis.sensitivity import fxgraph
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import prepare
from analysis.sensitivity.engines import engine_report, run_layer_fast
from analysis.sensitivity.naive import run_layer_naive
from analysis.workload.workload import Workload, load_workload


def assert_same(naive_rows: list[dict], fast_rows: list[dict], where: str) -> None:
    assert len(naive_rows) == len(fast_rows)
    for a, b in zip(naive_rows, fast_rows):
        cell = f"{where} at sparsity {a['sparsity']}"
        assert (a["sparsity"], a["n"], a["correct"], a["agree"]) == (b["sparsity"], b["n"], b["correct"], b["agree"]), cell
        assert b["loss_sum"] == pytest.approx(a["loss_sum"], rel=1e-5, abs=1e-7), cell
        assert b["kl_sum"] == pytest.approx(a["kl_sum"], rel=1e-4, abs=1e-6), cell
        assert a["actual_sparsity"] == b["actual_sparsity"], cell


def compare(workload: Workload, layers_every: int = 1, **config) -> dict:
    """Scan every ``layers_every``-th layer with both engines on one context; return the fast context's report."""
    ctx = prepare(workload, ScanConfig(**config))
    for layer in ctx.layers[::layers_every]:
        naive = run_layer_naive(ctx, layer)
        fast = run_layer_fast(ctx, layer)
        assert_same(naive.rows, fast.rows, layer.name)
    return engine_report(ctx)


def random_workload(model: nn.Module, shape: tuple[int, ...], n: int = 16, seed: int = 0) -> Workload:
    """A random-init model with BatchNorm statistics calibrated on the same random, label-free inputs."""
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))
    model.eval()
    recalibrate(model, x)
    with torch.inference_mode():
        classes = model(x[:1]).shape[-1]
    return Workload(model, EvalData(x, None, f"random:{'x'.join(map(str, shape))}"), type(model).__name__,
                    classes, shape)


@pytest.mark.parametrize("name", ["digits-cnn", "digits-resnet", "digits-mlp"])
def test_samples_match_naive(workloads, name):
    report = compare(workloads[name], sparsities=(0.3, 0.6, 0.9))
    assert report["used"] == "fast" and not report["notices"]


@pytest.mark.parametrize("criterion,granularity", [("l2", "channel"), ("magnitude", "2:4"), ("taylor", "unstructured"),
                                                   ("activation", "unstructured"), ("random", "channel")])
def test_criteria_and_granularities_match_naive(workloads, criterion, granularity):
    sparsities = (0.5,) if granularity == "2:4" else (0.25, 0.75)
    compare(workloads["digits-resnet"], criterion=criterion, granularity=granularity, sparsities=sparsities,
            calib_samples=64)


def test_resnet18_matches_naive():
    torch.manual_seed(0)
    compare(random_workload(torchvision.models.resnet18(), (3, 32, 32), n=8), layers_every=2,
            sparsities=(0.3, 0.6, 0.9))


def test_mobilenet_v3_small_matches_naive():
    torch.manual_seed(0)
    compare(random_workload(torchvision.models.mobilenet_v3_small(), (3, 32, 32)), layers_every=3,
            sparsities=(0.3, 0.6, 0.9), granularity="channel")


def test_vision_transformer_matches_naive():
    """nn.MultiheadAttention's in_proj_weight is a layer too; the class token is broadcast over the variants."""
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=32, mlp_dim=64)
    workload = random_workload(vit, (3, 32, 32))
    report = compare(workload, sparsities=(0.5, 0.9))
    assert report["used"] == "fast"
    names = [l.name for l in prepare(workload, ScanConfig(sparsities=(0.5,))).layers]
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj" in names


def test_swin_transformer_matches_naive():
    torch.manual_seed(0)
    swin = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                                              window_size=[4, 4])
    compare(random_workload(swin, (3, 32, 32)), sparsities=(0.5, 0.9))


class SequenceFirstAttention(nn.Module):
    """Batch on dimension 1, a weight used twice, and a layer whose output is thrown away."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2)
        self.mix = nn.Linear(16, 16)
        self.unused = nn.Linear(16, 4)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).transpose(0, 1)
        a, _ = self.attn(h, h, h)
        h = h + a
        h = self.mix(torch.relu(self.mix(h)))
        self.unused(h)
        return self.head(h.mean(0))


def test_sequence_first_shared_weight_and_dead_layer_match_naive():
    report = compare(random_workload(SequenceFirstAttention(), (5, 8), n=12), sparsities=(0.3, 0.8))
    assert report["used"] == "fast"


def test_layers_in_any_order_and_shards_match_naive(workloads):
    """The frontier cache must not leak between shards or depend on the order layers are asked for."""
    ctx = prepare(workloads["digits-resnet"], ScanConfig(sparsities=(0.5, 0.9), chunk_size=7))
    for layer in reversed(ctx.layers):
        for shard in [(0, 50), (50, 121), (0, 121)]:
            assert_same(run_layer_naive(ctx, layer, shard).rows, run_layer_fast(ctx, layer, shard).rows, layer.name)


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:
            h = torch.relu(h)
        return self.b(h)


def test_untraceable_model_falls_back_to_naive_with_a_notice():
    workload = random_workload(DataDependent(), (4,))
    report = compare(workload, sparsities=(0.5,))
    assert report["used"] == "naive"
    assert len(report["notices"]) == 1 and "torch.fx cannot trace" in report["notices"][0]


def test_torchscript_model_falls_back_to_naive():
    scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
    report = compare(random_workload(scripted, (4,)), sparsities=(0.5,))
    assert report["used"] == "naive" and "TorchScript" in report["notices"][0]


def test_trace_makes_in_place_operations_out_of_place():
    gm = fxgraph.trace(torchvision.models.resnet18())
    for node in gm.graph.nodes:
        if node.op == "call_module":
            assert getattr(gm.get_submodule(node.target), "inplace", False) is False, node.name
        assert not (node.op == "call_function" and "iadd" in str(node.target)), node.name
    assert torchvision.models.resnet18().relu.inplace, "the user's model must be left as it was"


def test_bf16_precision_runs_close_to_exact(workloads):
    ctx = prepare(workloads["digits-cnn"], ScanConfig(sparsities=(0.5,), precision="bf16"))
    layer = ctx.layers[0]
    exact = prepare(workloads["digits-cnn"], ScanConfig(sparsities=(0.5,)))
    a, b = run_layer_fast(exact, exact.layers[0]).rows[1], run_layer_fast(ctx, layer).rows[1]
    assert a["n"] == b["n"] and abs(a["agree"] - b["agree"]) <= 0.1 * a["n"]
    naive = run_layer_naive(ctx, layer).rows[1]
    assert abs(naive["agree"] - b["agree"]) <= 1 and abs(naive["correct"] - b["correct"]) <= 1


def test_cli_scan_uses_fast_engine_by_default(tmp_path):
    out = tmp_path / "scan"
    result = run_cli("scan", "--model", "sample:digits-cnn", "--data", "sample:digits", "--sparsities", "0.5",
                     "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "scan.json").read_text())
    assert meta["engine"]["used"] == "fast" and meta["engine"]["peak_cache_mb"] >= 0


@pytest.mark.parametrize("args,message", [(["--precision", "tf32"], "tf32 needs a CUDA device"),
                                          (["--chunk-size", "0"], "chunk size must be positive")])
def test_cli_rejects_bad_engine_options(tmp_path, args, message):
    result = run_cli("scan", "--model", "sample:digits-mlp", "--data", "sample:digits", "--out", tmp_path, *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_engines_measure_any_sparsities_the_same(tmp_path):
    """Both engines take an explicit list of sparsities (adaptive scans ask for points off the grid) and agree."""
    ctx = prepare(load_workload("sample:digits-cnn", "sample:digits", count=96), ScanConfig(batch_size=32))
    layer = ctx.layers[1]
    wanted = (0.35, 0.05, 0.95)
    fast = run_layer_fast(ctx, layer, None, wanted)
    naive = run_layer_naive(ctx, layer, None, wanted)
    assert [r["sparsity"] for r in fast.rows] == list(wanted)
    for a, b in zip(fast.rows, naive.rows):
        assert a["correct"] == b["correct"] and a["agree"] == b["agree"]
        assert abs(a["actual_sparsity"] - a["sparsity"]) < 0.01
    assert fast.rows[2]["agree"] < fast.rows[1]["agree"]


class BatchFromInput(nn.Module):
    """Reads its batch size before the first layer and reshapes with it after: the pruned variants of ``conv1``
    cannot be folded into the batch (the dense ``n`` would be wrong for them) and must go through vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(h.reshape(n, -1))


def test_variants_fold_into_the_batch_only_when_that_is_safe(monkeypatch):
    from analysis.sensitivity import fast

    folded: dict[str, list] = {}
    real_fold = fast._fold

    def spy(gm, cut, *rest):
        out = real_fold(gm, cut, *rest)
        folded.setdefault(cut.roots[0].target, []).append(out is not None)
        return out

    monkeypatch.setattr(fast, "_fold", spy)
    torch.manual_seed(0)
    report = compare(random_workload(BatchFromInput(), (1, 8, 8), n=40), sparsities=(0.4, 0.8), chunk_size=16)
    assert report["used"] == "fast"
    assert folded["conv1"] == folded["conv2"] == [False] * 3
    assert folded["fc"] == [True] * 3
    folded.clear()
    compare(load_workload("sample:digits-cnn", "sample:digits", count=40), sparsities=(0.4, 0.8), chunk_size=16)
    assert len(folded) > 2 and all(all(v) for v in folded.values())
