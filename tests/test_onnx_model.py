"""ONNX models analysed in ONNX Runtime give the numbers of the PyTorch model they were exported from."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from analysis.core.layers import find_layers
from analysis.core.masks import applied, make_mask
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import prepare
from analysis.sensitivity.driver import scan
from analysis.workload.errors import SpecError
from analysis.workload.models import load_model
from analysis.workload.onnx import OnnxModel, save_pruned
from analysis.workload.workload import load_workload

CONFIG = ScanConfig(sparsities=(0.5, 0.9), batch_size=256)
METRICS = ["accuracy", "loss", "agreement", "kl"]


class TokenMixer(nn.Module):
    """Linear layers on a 3-D input: exported as MatMul with a transposed weight initializer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(8, 16)
        self.head = nn.Linear(16, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.proj(x.flatten(1, 2)))
        return self.head(h).mean(dim=1)


def export(model: nn.Module, example: torch.Tensor, path: Path, fold: bool = False) -> Path:
    """Export without folding BatchNorm into the convolutions, so the weights stay the PyTorch ones."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}}, do_constant_folding=fold)
    return path


@pytest.fixture(scope="session")
def onnx_files(tmp_path_factory: pytest.TempPathFactory, workloads) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    x = workloads["digits-cnn"].data.x[:2]
    files = {name: export(workloads[name].model, x, folder / f"{name}.onnx") for name in ("digits-cnn", "digits-mlp")}
    files["mixer"] = export(TokenMixer().eval(), x, folder / "mixer.onnx")
    files["mixer-folded"] = export(TokenMixer().eval(), x, folder / "mixer-folded.onnx", fold=True)
    return files


@pytest.mark.parametrize("name", ["digits-cnn", "digits-mlp"])
def test_onnx_scan_equals_the_pytorch_scan(name: str, onnx_files, workloads) -> None:
    torch_wl = workloads[name]
    onnx_wl = load_workload(str(onnx_files[name]), "sample:digits")
    assert isinstance(onnx_wl.model, OnnxModel)
    a, b = scan(torch_wl, CONFIG), scan(onnx_wl, CONFIG)
    assert list(a.table["layer"]) == list(b.table["layer"])
    assert list(a.table["flops"]) == list(b.table["flops"]) and list(a.table["params"]) == list(b.table["params"])
    np.testing.assert_allclose(b.table[METRICS].to_numpy(float), a.table[METRICS].to_numpy(float), atol=1e-5)
    assert (b.table["correct"] - a.table["correct"]).abs().max() <= 1


@pytest.mark.parametrize("variant", ["mixer", "mixer-folded"])
def test_matmul_weights_are_layers_in_pytorch_layout(variant: str, onnx_files, workloads) -> None:
    """Unfolded exports read W through a Transpose node; folded ones store W transposed: both are found."""
    model = TokenMixer().eval()
    wrapped = load_model(str(onnx_files[variant]))
    x = workloads["digits-cnn"].data.x[:64]
    torch_layers, onnx_layers = find_layers(model, x[:1]), find_layers(wrapped, x[:1])
    assert [l.shape for l in onnx_layers] == [l.shape for l in torch_layers] == [(16, 8), (10, 16)]
    assert [l.flops for l in onnx_layers] == [l.flops for l in torch_layers]
    for tl, ol in zip(torch_layers, onnx_layers):
        mask = make_mask(tl.weight(model).abs(), 0.6, "unstructured")
        with applied(model, {tl.param_name: mask}), applied(wrapped, {ol.param_name: mask}):
            torch.testing.assert_close(wrapped(x), model(x).detach(), atol=1e-5, rtol=1e-5)


def test_pruning_one_weight_runs_a_session_where_only_that_weight_is_an_input(onnx_files, workloads) -> None:
    """Such a session is kept per layer (ONNX Runtime can pre-pack the constant weights) and gives the numbers
    of the session where every weight is an input; two pruned weights at once fall back to that session."""
    wl = load_workload(str(onnx_files["digits-cnn"]), "sample:digits")
    model, x = wl.model, wl.data.x[:64]
    everything = model._session
    dense = model(x)
    layers = prepare(wl, CONFIG).layers

    def all_inputs() -> torch.Tensor:
        return torch.from_numpy(everything.run([model.output_name], model._feeds(x))[0])

    masks = {l.param_name: make_mask(l.weight(model).abs(), 0.7, "unstructured") for l in layers}
    for layer in layers:
        with applied(model, {layer.param_name: masks[layer.param_name]}):
            pruned = model(x)
            assert model._single[0].param_name == layer.param_name
            torch.testing.assert_close(pruned, all_inputs(), atol=1e-5, rtol=1e-5)
            assert not torch.allclose(pruned, dense)
    with applied(model, {l.param_name: masks[l.param_name] for l in layers[:2]}):
        session, weights = model._session_for_current_weights()
        assert session is everything and len(weights) == len(layers)
        torch.testing.assert_close(model(x), all_inputs())
    torch.testing.assert_close(model(x), dense)


def test_onnx_scan_with_one_input_sessions_equals_the_all_inputs_scan(onnx_files, monkeypatch) -> None:
    wl = load_workload(str(onnx_files["digits-cnn"]), "sample:digits")
    fast = scan(wl, CONFIG)
    monkeypatch.setattr(OnnxModel, "_session_for_current_weights", lambda self: (self._session, self._weights))
    reference = scan(load_workload(str(onnx_files["digits-cnn"]), "sample:digits"), CONFIG)
    np.testing.assert_allclose(fast.table[METRICS].to_numpy(float), reference.table[METRICS].to_numpy(float),
                               rtol=1e-6, atol=1e-7)
    assert list(fast.table["correct"]) == list(reference.table["correct"])


def test_save_pruned_writes_the_same_graph_with_pruned_initializers(onnx_files, tmp_path: Path) -> None:
    model = load_model(str(onnx_files["digits-cnn"]))
    x = torch.rand(8, 1, 8, 8)
    layers = find_layers(model, x[:1])
    masks = {l.param_name: make_mask(l.weight(model).abs(), 0.5, "channel") for l in layers[:2]}
    with applied(model, masks):
        expected = model(x)
    out = save_pruned(model, tmp_path / "pruned.onnx", masks)
    original, pruned = onnx.load(str(onnx_files["digits-cnn"])), onnx.load(str(out))
    assert [n.op_type for n in pruned.graph.node] == [n.op_type for n in original.graph.node]
    assert [i.name for i in pruned.graph.input] == [i.name for i in original.graph.input]
    inits = {i.name: numpy_helper.to_array(i) for i in pruned.graph.initializer}
    before = {i.name: numpy_helper.to_array(i) for i in original.graph.initializer}
    for layer in layers[:2]:
        keep = masks[layer.param_name].numpy()
        assert (inits[layer.param_name][~keep] == 0).all() and (~keep).any()
        assert np.array_equal(inits[layer.param_name][keep], before[layer.param_name][keep])
    for name in set(before) - {l.param_name for l in layers[:2]}:
        assert np.array_equal(inits[name], before[name]), name
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    assert torch.equal(model(x), load_model(str(onnx_files["digits-cnn"]))(x))


@pytest.mark.parametrize("criterion", ["taylor", "activation"])
def test_criteria_that_need_pytorch_internals_are_refused(criterion: str, onnx_files) -> None:
    wl = load_workload(str(onnx_files["digits-mlp"]), "sample:digits", count=16)
    with pytest.raises(ValueError, match="ONNX Runtime.*use magnitude, l1, l2 or random"):
        prepare(wl, ScanConfig(criterion=criterion, sparsities=(0.5,)))


def test_damaged_onnx_file_is_a_spec_error(onnx_files, tmp_path: Path) -> None:
    data = onnx_files["digits-mlp"].read_bytes()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpecError, match="cut.onnx"):
        load_model(str(bad))


def test_onnx_with_two_inputs_is_refused(tmp_path: Path) -> None:
    a = onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1, 4])
    b = onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Add", ["a", "b"], ["y"])], "two", [a, b], [y])
    path = tmp_path / "two.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(SpecError, match="2 graph inputs"):
        load_model(str(path))


def test_scan_table_columns_are_the_same_for_onnx(onnx_files) -> None:
    profile = scan(load_workload(str(onnx_files["digits-mlp"]), "sample:digits", count=64), CONFIG)
    assert isinstance(profile.table, pd.DataFrame) and profile.meta["complete"]
    assert set(profile.table["type"]) == {"Linear"}


def test_export_engine_writes_an_onnx_input_back_as_its_own_graph(onnx_files, tmp_path: Path) -> None:
    from analysis.deploy.export import export
    from analysis.schedule.schedule import Schedule

    wl = load_workload(str(onnx_files["digits-cnn"]), "sample:digits", count=64)
    report = export(wl.model, Schedule({"block2.0": 0.5, "fc": 0.5}), wl.data, tmp_path / "p.onnx",
                    measure_latency=False)
    assert report.exporter == "onnx-graph" and all(v.passed for v in report.verifications)
    source, written = onnx.load(str(onnx_files["digits-cnn"])), onnx.load(str(tmp_path / "p.onnx"))
    assert [n.op_type for n in written.graph.node] == [n.op_type for n in source.graph.node]
    zeros = {i.name: float((numpy_helper.to_array(i) == 0).mean()) for i in written.graph.initializer}
    assert zeros["block2.0.weight"] == 0.5 and zeros["fc.weight"] == 0.5 and zeros["block1.0.weight"] == 0.0


@pytest.mark.parametrize("batch", [1, 3])
def test_a_graph_exported_for_a_fixed_batch_size_runs_in_batches_of_it(batch: int, workloads, tmp_path: Path) -> None:
    """``torch.onnx.export`` without ``dynamic_axes`` (its default) fixes the batch size: scans, verification and
    latency run in batches of that size, the last one padded."""
    from analysis.deploy.export import export

    torch_wl = workloads["digits-cnn"]
    path = tmp_path / "static.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch_wl.model, (torch_wl.data.x[:batch],), str(path), dynamo=False,
                          do_constant_folding=False)
    wl = load_workload(str(path), "sample:digits", count=50)
    assert wl.model.fixed_batch == batch
    torch.testing.assert_close(wl.model(wl.data.x), torch_wl.model(wl.data.x), atol=1e-5, rtol=1e-5)
    config = ScanConfig(sparsities=(0.5,), layers=("fc",))
    ref = scan(load_workload("sample:digits-cnn", "sample:digits", count=50), config).table
    np.testing.assert_allclose(scan(wl, config).table[METRICS].to_numpy(float), ref[METRICS].to_numpy(float), atol=1e-5)
    from analysis.schedule.schedule import Schedule

    report = export(wl.model, Schedule({"fc": 0.5}), wl.data, tmp_path / "p.onnx", repeats=2)
    assert all(v.passed for v in report.verifications)
    assert set(report.latency["batch"]) == {batch}


def test_a_pt2_exported_for_a_fixed_batch_size_is_refused_with_the_way_out(workloads, tmp_path: Path) -> None:
    model = workloads["digits-cnn"].model
    torch.export.save(torch.export.export(model, (workloads["digits-cnn"].data.x[:1],)), str(tmp_path / "b1.pt2"))
    with pytest.raises(SpecError, match=r"fixed batch size: export it with a dynamic one.*Dim\('batch'\)"):
        load_workload(str(tmp_path / "b1.pt2"), "sample:digits", count=8, trust_code=True)


@pytest.mark.parametrize("dynamo", [False, True])
def test_layers_are_named_after_their_modules_when_the_exporter_renames_the_weights(dynamo: bool, workloads,
                                                                                     tmp_path: Path) -> None:
    """Folding BatchNorm into a convolution makes a new initializer (``onnx::Conv_62``); the layer keeps the
    name of the module it came from, read from the node's name or its ``name_scopes`` metadata."""
    model = workloads["digits-resnet"].model
    path = tmp_path / "folded.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (workloads["digits-resnet"].data.x[:2],), str(path), dynamo=True,
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
        else:
            torch.onnx.export(model, (workloads["digits-resnet"].data.x[:2],), str(path), dynamo=False,
                              input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    inits = {i.name for i in onnx.load(str(path)).graph.initializer}
    onnx_layers = find_layers(load_model(str(path)), workloads["digits-resnet"].data.x[:1])
    torch_layers = find_layers(model, workloads["digits-resnet"].data.x[:1])
    assert sorted(l.name for l in onnx_layers) == sorted(l.name for l in torch_layers)
    if not dynamo:
        assert any(name.startswith("onnx::") for name in inits)  # the case this is about


def test_diagnose_and_fine_tuning_say_they_need_the_model_in_pytorch_form(onnx_files) -> None:
    from analysis.diagnostics.diagnosis import diagnose
    from analysis.schedule.measure import measure_schedule
    from analysis.schedule.schedule import Schedule

    wl = load_workload(str(onnx_files["digits-mlp"]), "sample:digits", count=16)
    pytorch_form = r"Give the model in PyTorch form: TorchScript \(.pt\), a torch.export program \(.pt2\) or model.py"
    with pytest.raises(ValueError, match=r"diagnose is not available for ONNX models .*activations.*" + pytorch_form):
        diagnose(wl, ScanConfig(sparsities=(0.5,)))
    layers = find_layers(wl.model, wl.data.x[:1])
    schedule = Schedule({layers[0].name: 0.5})
    with pytest.raises(ValueError, match=r"fine-tuning is not available for ONNX models .*gradients.*" + pytorch_form):
        measure_schedule(wl, schedule, train=wl.data, finetune_steps=2)
    assert measure_schedule(wl, schedule).stages["pruned"]["agreement"] > 0  # measuring alone still works


def test_onnx_scan_prints_no_torch_fx_note(onnx_files, tmp_path: Path) -> None:
    from tests.conftest import run_cli

    res = run_cli("scan", "--model", onnx_files["digits-mlp"], "--data", "sample:digits", "--count", "32",
                  "--sparsities", "0.5", "--quiet", "--no-store", "--out", tmp_path / "o")
    assert res.returncode == 0, res.stderr
    assert "torch.fx" not in res.stderr and "note:" not in res.stderr, res.stderr


def _tiny_convnet(pooled: bool) -> nn.Module:
    """The browser walk's ONNX net (tests/test_e2e_browser.py; random weights, seed 0), or the same layers
    without the average pooling, whose answers vary from input to input."""
    torch.manual_seed(0)
    if not pooled:
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
                             nn.Flatten(), nn.Linear(16 * 14 * 14, 5)).eval()
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).eval()


@pytest.mark.parametrize("pooled", [True, False])
def test_the_onnx_walks_zero_drops_are_genuine(tmp_path, pooled):
    """The ONNX walk's all-zero drops are the net's, not the ONNX path's: its scan equals the scan of the same
    PyTorch net cell for cell, the masks change its outputs (KL above 0), and averaging 14x14 positions of random
    inputs leaves features so alike that it answers one class on every input, which no pruning of one layer
    moves. Without the pooling, the same ONNX path shows real drops."""
    import dataclasses

    net = _tiny_convnet(pooled)
    path = tmp_path / "tiny_convnet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 3, 16, 16),), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    workload = load_workload(str(path), "random:3x16x16", count=64)
    assert isinstance(workload.model, OnnxModel)
    config = ScanConfig(sparsities=(0.5, 0.9, 0.99))
    on_onnx = scan(workload, config).table.set_index(["layer", "sparsity"])
    on_torch = scan(dataclasses.replace(workload, model=net), config).table.set_index(["layer", "sparsity"])
    assert on_onnx.index.equals(on_torch.index)
    assert (on_onnx["agree"] == on_torch["agree"]).all()
    assert np.allclose(on_onnx["kl"], on_torch["kl"], atol=1e-5)
    pruned = on_onnx.xs(0.9, level="sparsity")
    assert (pruned["kl"] > 1e-6).all()  # every layer's mask reached the outputs
    with torch.no_grad():
        answers = net(workload.data.x).argmax(1).unique()
    if pooled:
        assert len(answers) == 1 and (on_onnx["agreement"] == 1).all()
    else:
        assert len(answers) > 1 and (on_onnx["agreement"] < 1).any()
