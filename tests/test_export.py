"""ONNX export: the file runs in ONNX Runtime and matches PyTorch, its weights carry the schedule, and the
shrunk model has the expected channels and computes what the masked reference computes."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from analysis.core.batchnorm import recalibrate
from analysis.core.data import EvalData
from analysis.core.granularity import is_nm
from analysis.core.layers import find_layers
from analysis.core.masks import applied
from analysis.core.metrics import predict
from analysis.deploy import export as ex
from analysis.schedule import shrink
from analysis.schedule.coupling import ShrinkError
from analysis.schedule.schedule import Schedule, ScheduleError
from analysis.schedule.totals import Accountant
from tests.conftest import run_cli

FAST = dict(exporter="torchscript", measure_latency=False, verify_samples=64)


def _initializers(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def _data(workload, n: int = 64) -> EvalData:
    d = workload.data
    return EvalData(d.x[:n], d.y[:n], d.spec)


def _plan(model, layers, schedule, x) -> shrink.ShrinkPlan:
    accountant = Accountant.from_model(model, x[:1], layers, schedule.criterion, "channel")
    return shrink.plan(model, accountant.coupling, accountant.resolve(schedule))


# ---------------------------------------------------------------------------------------------- masked export


def test_masked_export_runs_in_ort_and_matches_pytorch(workloads, tmp_path):
    w = workloads["digits-cnn"]
    data = _data(w)
    layers = find_layers(w.model, data.x[:1])
    schedule = Schedule({"block2.0": 0.6, "block3.0": 0.3, "fc": 0.5}, "magnitude", "unstructured")
    out = tmp_path / "cnn.onnx"
    report = ex.export(w.model, schedule, data, out, **FAST)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.md", "cnn.onnx", "cnn.schedule.json"]
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    keep = schedule.masks(w.model, layers)
    with applied(w.model, keep):
        expected = predict(w.model, data.x)
    for batch in (1, 7, 64):  # the batch dimension is dynamic
        got = ex.run_onnx(out, data.x, batch_size=batch)
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    v = report.verifications[0]
    assert v.passed and v.samples == 64 and v.top1_agreement == 1.0 and v.max_rel < 1e-4
    assert Schedule.load(report.schedule_path).sparsities == schedule.sparsities
    assert "Verification" in report.summary_path.read_text()


def test_weight_sparsity_read_back_from_onnx_equals_the_schedule(workloads, tmp_path):
    """The legacy exporter folds BatchNorm and renames the weights; the zeros must survive either way."""
    w = workloads["digits-cnn"]
    schedule = Schedule({"block1.0": 0.25, "block2.0": 0.6, "block3.0": 0.3, "fc": 0.5}, "l1", "unstructured")
    report = ex.export(w.model, schedule, _data(w), tmp_path / "cnn.onnx", **FAST)
    weights = ex.onnx_weights(tmp_path / "cnn.onnx", find_layers(w.model, w.data.x[:1]),
                              {l.name: l.shape for l in find_layers(w.model, w.data.x[:1])})
    for layer in find_layers(w.model, w.data.x[:1]):
        numel = math.prod(layer.shape)
        expected = round(schedule.sparsities[layer.name] * numel) / numel
        assert float((weights[layer.name] == 0).mean()) == pytest.approx(expected, abs=1e-12), layer.name
    table = report.layers.set_index("layer")
    assert table.loc["block2.0", "onnx_zero_fraction"] == pytest.approx(round(0.6 * 16 * 32 * 9) / (16 * 32 * 9))


def test_dynamo_export_keeps_the_2_4_pattern_in_the_initializers(workloads, tmp_path):
    w = workloads["digits-mlp"]
    schedule = Schedule({"fc1": 0.5, "fc2": 0.5, "fc3": 0.5}, "magnitude", "2:4")
    report = ex.export(w.model, schedule, _data(w), tmp_path / "mlp.onnx", exporter="dynamo",
                       measure_latency=True, repeats=2, verify_samples=64)
    assert report.exporter == "dynamo"
    inits = _initializers(tmp_path / "mlp.onnx")
    for name in ("fc1", "fc2", "fc3"):
        weight = torch.from_numpy(np.array(inits[f"{name}.weight"]))
        assert is_nm(weight, 2, 4)
        assert float((weight == 0).float().mean()) == 0.5
    assert report.layers["nm_ok"].all()
    assert report.pruned.nonzero_params < report.dense.nonzero_params
    assert report.pruned.gzip_bytes < report.dense.gzip_bytes  # zeros compress
    assert set(report.latency["model"]) == {"dense", "pruned"} and set(report.latency["batch"]) == {1, 32}
    assert (report.latency["threads"] == 1).all()


def test_the_dense_reference_is_kept_and_the_latency_budget_states_its_repeats_and_batch(workloads, tmp_path):
    w = workloads["digits-cnn"]
    schedule = Schedule({"block1.0": 0.5, "block2.0": 0.5}, "magnitude", "channel")
    options = dict(exporter="torchscript", verify_samples=64, shrink_channels=True, repeats=50, latency_budget_s=0.0,
                   dense_cache=ex.DenseCache(tmp_path / "dense", "fp"))
    first = ex.export(w.model, schedule, _data(w), tmp_path / "a.onnx", **options)
    again = ex.export(w.model, schedule, _data(w), tmp_path / "b.onnx", **options)
    assert not first.dense_cached and again.dense_cached and again.dense == first.dense
    assert len(list((tmp_path / "dense").glob("*.onnx"))) == 1
    dense_file, layers = next((tmp_path / "dense").glob("*.onnx")), find_layers(w.model, w.data.x[:1])
    weights = ex.onnx_weights(dense_file, layers, {l.name: l.shape for l in layers})
    assert first.dense == ex.file_cost(dense_file, weights)  # what was kept is what the file holds
    assert (first.latency["repeats"] == ex.MIN_REPEATS).all()  # a spent budget still runs the minimum
    assert (ex.speedups(first.latency)["repeats"] == ex.MIN_REPEATS).all()
    # no time for batch 32 either: the second batch halves down to 2, and the report says so
    assert set(first.latency["batch"]) == {1, 2} and set(ex.speedups(first.latency)["batch"]) == {1, 2}
    assert any(n.startswith("latency measured at batch 2, not 32") for n in first.notes)
    assert "latency measured at batch 2" in first.summary_path.read_text()
    assert ex.fitting_batch(32, 0.1, 1.0) == 8 and ex.fitting_batch(32, 0.01, 1.0) == 32
    assert ex.fitting_batch(32, 10.0, 1.0) == 2
    assert {"dense reference, its size and outputs", "prune", "verify and size"} <= set(first.seconds)


def test_gzip_size_is_that_of_a_gzip_file_of_it_and_big_inputs_run_in_small_batches(tmp_path):
    import gzip

    path = tmp_path / "blob"
    rng = np.random.default_rng(0)
    data = rng.standard_normal(300_000).astype(np.float32).tobytes() + bytes(500_000)
    path.write_bytes(data)
    for chunk, threads in ((65_536, 3), (len(data), 1), (1 << 24, 2)):
        stream = b"".join(ex.gzip_pieces(path, chunk=chunk, threads=threads))
        assert gzip.decompress(stream) == data and ex.gzip_size(path, chunk, threads) == len(stream)
    whole = len(gzip.compress(data, compresslevel=1))  # one stream: pieces of 64 KB come within 1% of it
    assert abs(ex.gzip_size(path, chunk=65_536) - whole) <= whole * 0.01 and ex.gzip_size(path) < len(data) * 0.8
    (tmp_path / "empty").write_bytes(b"")
    assert gzip.decompress(b"".join(ex.gzip_pieces(tmp_path / "empty"))) == b""
    images = torch.zeros(64, 3, 224, 224)
    assert 1 <= ex.batch_size_for(images) < 64 and ex.batch_size_for(images) * images[0].numel() <= ex.BATCH_ENTRIES
    assert ex.batch_size_for(torch.zeros(64, 64)) == 64  # small inputs: one batch of 64, as before


def test_batchnorm_recalibration_is_baked_into_the_export(workloads, tmp_path):
    w = workloads["digits-cnn"]
    data = _data(w)
    schedule = Schedule({"block1.0": 0.5, "block2.0": 0.5}, "magnitude", "channel")
    report = ex.export(w.model, schedule, data, tmp_path / "bn.onnx", bn_recalibrate=True, calib_samples=64, **FAST)
    assert report.bn_recalibrated == 3
    import copy

    mine = copy.deepcopy(w.model)
    keep = schedule.masks(mine, find_layers(mine, data.x[:1]))
    with torch.no_grad():
        for name, mask in keep.items():
            mine.get_parameter(name).mul_(mask)
    recalibrate(mine, data.x[:64])
    got = ex.run_onnx(tmp_path / "bn.onnx", data.x)
    assert torch.allclose(got, predict(mine, data.x), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, predict(w.model, data.x), atol=1e-3)


def test_failed_verification_fails_the_export_and_moves_the_file_aside(workloads, tmp_path, monkeypatch):
    w = workloads["digits-mlp"]
    real = ex.run_onnx
    monkeypatch.setattr(ex, "run_onnx", lambda *a, **k: real(*a, **k) + 0.5)
    with pytest.raises(ex.VerificationError, match="max rel diff"):
        ex.export(w.model, Schedule({"fc1": 0.5}), _data(w), tmp_path / "bad.onnx", **FAST)
    assert not (tmp_path / "bad.onnx").exists()
    assert (tmp_path / "bad.rejected.onnx").exists()


# ---------------------------------------------------------------------------------------------- shrunk export


@pytest.fixture(scope="module")
def resnet_shrunk(workloads, tmp_path_factory):
    """digits-resnet with a coupled residual group asked for different sparsities, exported shrunk once."""
    w = workloads["digits-resnet"]
    schedule = Schedule({"stem.0": 0.5, "layer1.conv1": 0.5, "layer1.conv2": 0.25, "layer2.conv1": 0.75,
                         "layer2.conv2": 0.5, "layer2.downsample.0": 0.5, "fc": 0.3}, "l2", "channel")
    out = tmp_path_factory.mktemp("shrunk") / "resnet.onnx"
    report = ex.export(w.model, schedule, _data(w), out, shrink_channels=True, **FAST)
    return w, schedule, report


def test_shrunk_model_has_the_expected_channel_counts(resnet_shrunk):
    w, schedule, report = resnet_shrunk
    inits = _initializers(report.onnx_path)
    layers = find_layers(w.model, w.data.x[:1])
    stored = ex.onnx_weights(report.onnx_path, layers, {l.name: (0,) for l in layers})
    assert stored == {}  # shapes changed: nothing matches the dense shapes
    # stem.0 and layer1.conv2 share the residual stream: both lose round(min(0.5, 0.25) * 16) = 4 channels.
    # fc's output channels are the logits: kept whole. The others are alone in their groups.
    expected = {"stem.0": 12, "layer1.conv1": 8, "layer1.conv2": 12, "layer2.conv1": 8, "layer2.conv2": 16,
                "layer2.downsample.0": 16, "fc": 10}
    table = report.layers.set_index("layer")
    for name, kept in expected.items():
        assert table.loc[name, "out_channels_kept"] == kept
        assert table.loc[name, "onnx_out_channels"] == kept
    conv_out = sorted(a.shape[0] for a in inits.values() if a.ndim == 4)
    assert conv_out == sorted(expected[n] for n in expected if n != "fc")
    assert report.pruned.params < report.dense.params
    exported = Schedule.load(report.schedule_path)
    assert exported.sparsities == {n: 1 - kept / l.shape[0] for l in layers for n, kept in expected.items()
                                   if n == l.name and kept < l.shape[0]}
    assert exported.meta["export"]["requested"] == schedule.sparsities
    notes = " ".join(report.notes)
    assert "limited by layer1.conv2" in notes and "model's outputs" in notes


def test_shrunk_export_matches_the_masked_reference(resnet_shrunk):
    w, schedule, report = resnet_shrunk
    names = [(v.candidate, v.reference) for v in report.verifications]
    assert ("pytorch shrunk model", "masked reference") in names
    assert all(v.passed for v in report.verifications)
    # Independently: rebuild the reference and compare it with what ONNX Runtime computes from the file.
    layers = find_layers(w.model, w.data.x[:1])
    plan = _plan(w.model, layers, schedule, w.data.x)
    reference = plan.masked(w.model)
    x = w.data.x[:64]
    got = ex.run_onnx(report.onnx_path, x)
    assert torch.allclose(got, predict(reference, x), rtol=1e-4, atol=1e-5)
    # The reference differs from the plain weight-masked model: zeroed BatchNorm shifts are part of the shrink.
    assert not torch.allclose(predict(reference, x), predict(w.model, x), atol=1e-3)


def test_single_layer_groups_remove_the_channels_the_schedule_masks(workloads):
    w = workloads["digits-cnn"]
    layers = find_layers(w.model, w.data.x[:1])
    schedule = Schedule({"block1.0": 0.5, "block2.0": 0.25, "block3.0": 0.75}, "l1", "channel")
    plan = _plan(w.model, layers, schedule, w.data.x)
    keep = schedule.masks(w.model, layers)
    for layer in layers[:3]:
        dropped = (~keep[layer.param_name].reshape(layer.shape[0], -1).all(dim=1)).nonzero().flatten().tolist()
        rows = plan.kept[layer.param_name][0].tolist()
        assert sorted(set(range(layer.shape[0])) - set(rows)) == dropped
    assert {n: 1 - after / before for n, (before, after) in plan.out_channels(layers).items()} == schedule.sparsities


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_shrink_matches_masked_reference(arch):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    layers = find_layers(model, x[:1])
    schedule = Schedule({l.name: 0.5 for l in layers}, "l1", "channel")
    accountant = Accountant.from_model(model, x[:1], layers, "l1", "channel")
    resolved = accountant.resolve(schedule)
    plan = shrink.plan(model, accountant.coupling, resolved)
    reference = plan.masked(model)
    small = plan.build(reference)
    a, b = predict(small, x), predict(reference, x)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    assert sum(p.numel() for p in small.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())
    coupled = [g for g in accountant.coupling.groups if len(g.layers) > 1]
    assert coupled and all(resolved.units[g.key] == g.channels // 2 for g in coupled)
    if arch == "mobilenet_v3_small":  # a depthwise convolution loses what the conv that feeds it loses
        assert any(name.endswith("block.1.0") for g in coupled for name in g.layers)


def test_a_weight_of_more_than_2_to_the_24_entries_shrinks_exactly():
    """Tags are integer bits stored as floats: a float32 would hold flat indices exactly only up to 2**24."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 4097), nn.ReLU(), nn.Linear(4097, 4100), nn.ReLU(), nn.Linear(4100, 10))
    assert model[2].weight.numel() > 2**24
    x = torch.randn(8, 16)
    layers = find_layers(model, x[:1])
    schedule = Schedule({"0": 0.5, "2": 0.5}, "l1", "channel")
    plan = _plan(model, layers, schedule, x)
    keep = schedule.masks(model, layers)
    rows, cols = plan.kept["2.weight"]
    dropped = (~keep["2.weight"].all(dim=1)).nonzero().flatten().tolist()
    assert sorted(set(range(4100)) - set(rows.tolist())) == dropped and 0 < len(rows) < 4100
    assert torch.equal(cols, plan.kept["0.weight"][0]) and 0 < len(cols) < 4097  # the input follows the layer before
    reference = plan.masked(model)
    small = plan.build(reference)
    assert small[2].weight.shape == (len(rows), len(cols)) and small[2].weight.dtype == torch.float32
    assert torch.equal(small[2].weight, model[2].weight[rows][:, cols])
    assert torch.allclose(predict(small, x), predict(reference, x), atol=1e-5)


# ------------------------------------------------------------------------------------- what cannot be shrunk


class FunctionalConv(nn.Module):
    """A convolution through F.conv2d on a bare parameter: the dependency graph does not see it as a layer."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(8, 1, 3, 3) * 0.3)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(F.conv2d(x, self.kernel, padding=1)).mean(dim=(2, 3)))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv2(F.relu(self.conv1(x)))).mean(dim=(2, 3)))


def test_a_layer_the_graph_cannot_shrink_is_left_dense_and_the_notes_say_so(digits, tmp_path):
    torch.manual_seed(0)
    model = FunctionalConv().eval()
    data = EvalData(digits.x[:32], digits.y[:32], digits.spec)
    schedule = Schedule({"kernel": 0.5}, "l1", "channel")
    report = ex.export(model, schedule, data, tmp_path / "shrunk.onnx", shrink_channels=True, **FAST)
    assert report.schedule.sparsities == {} and all(v.passed for v in report.verifications)
    assert any("kernel: not pruned by channel" in n and "not a Conv/Linear module" in n for n in report.notes)


def test_a_grouped_convolution_loses_the_same_positions_in_every_group(digits, tmp_path):
    torch.manual_seed(0)
    model = Grouped().eval()
    data = EvalData(digits.x[:32], digits.y[:32], digits.spec)
    schedule = Schedule({"conv1": 0.5, "conv2": 0.5}, "l1", "channel")
    report = ex.export(model, schedule, data, tmp_path / "shrunk.onnx", shrink_channels=True, **FAST)
    assert all(v.passed for v in report.verifications)
    weights = _initializers(tmp_path / "shrunk.onnx")
    conv1 = next(a for a in weights.values() if a.shape[:2] == (4, 1))  # 2 of 4 channels in each of 2 groups
    conv2 = next(a for a in weights.values() if a.ndim == 4 and a.shape[0] == 4 and a.shape[1] == 2)
    assert conv1.shape == (4, 1, 3, 3) and conv2.shape == (4, 2, 3, 3)
    assert report.schedule.sparsities == {"conv1": 0.5, "conv2": 0.5}


def test_torchscript_model_exports_masked_but_not_shrunk(workloads, tmp_path):
    w = workloads["digits-cnn"]
    scripted = torch.jit.script(w.model)
    data = _data(w, 32)
    schedule = Schedule({"block2.0": 0.5}, "l1", "channel")
    with pytest.raises(ShrinkError, match="TorchScript"):  # said before the dense reference is made
        ex.export(scripted, schedule, data, tmp_path / "s.onnx", shrink_channels=True,
                  dense_cache=ex.DenseCache(tmp_path / "dense", "fp"), **FAST)
    assert not (tmp_path / "dense").exists() and not (tmp_path / "s.onnx").exists()
    report = ex.export(scripted, schedule, data, tmp_path / "m.onnx", exporter="auto", measure_latency=False,
                       verify_samples=32)
    assert report.exporter == "torchscript"
    assert report.layers.set_index("layer").loc["block2.0", "onnx_zero_fraction"] == 0.5


def test_export_rejects_bad_requests(workloads, tmp_path):
    w = workloads["digits-mlp"]
    data = _data(w, 16)
    with pytest.raises(ex.ExportError, match="channel granularity"):
        ex.export(w.model, Schedule({"fc1": 0.5}), data, tmp_path / "a.onnx", shrink_channels=True, **FAST)
    with pytest.raises(ex.ExportError, match=r"\.onnx"):
        ex.export(w.model, Schedule({"fc1": 0.5}), data, tmp_path / "a.txt", **FAST)
    with pytest.raises(ScheduleError, match="nope"):
        ex.export(w.model, Schedule({"nope": 0.5}), data, tmp_path / "a.onnx", **FAST)
    with pytest.raises(ex.ExportError, match="exporter"):
        ex.export(w.model, Schedule({"fc1": 0.5}), data, tmp_path / "a.onnx", exporter="tflite")


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_export_writes_verified_files(tmp_path):
    sched = Schedule({"block1.0": 0.5, "block2.0": 0.5}, "l1", "channel").save(tmp_path / "s.json")
    out = tmp_path / "cnn.onnx"
    res = run_cli("export", "--model", "sample:digits-cnn", "--schedule", sched, "--shrink", "--exporter",
                  "torchscript", "--repeats", "2", "--verify-samples", "64", "--json", "--out", out)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["mode"] == "shrunk" and all(v["passed"] for v in report["verifications"])
    assert report["exported"] == {"block1.0": 0.5, "block2.0": 0.5}
    assert out.exists() and out.with_suffix(".md").exists() and out.with_suffix(".schedule.json").exists()
    assert {r["batch"] for r in report["latency"]} == {1, 32}


def test_cli_export_usage_errors(tmp_path, capsys):
    from analysis.cli import main

    sched = Schedule({"fc1": 0.5}).save(tmp_path / "s.json")
    assert main(["export", "--model", "sample:digits-mlp", "--schedule", str(sched), "--shrink",
                 "--out", str(tmp_path / "a.onnx")]) == 2
    assert "channel granularity" in capsys.readouterr().err
    assert main(["export", "--model", "sample:digits-mlp", "--schedule", str(tmp_path / "missing.json"),
                 "--out", str(tmp_path / "a.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", "--model", "model.py:make", "--schedule", str(sched),
                 "--out", str(tmp_path / "a.onnx")]) == 2
    assert "give --data" in capsys.readouterr().err
