"""Every model and data format loads to the same model and data; every broken file is a clear error."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import prepare
from analysis.workload.data import load_data
from analysis.workload.errors import SpecError
from analysis.workload.models import load_model
from analysis.workload.workload import check_fit, load_workload
from tests.conftest import run_cli

FACTORY = '''
import torch
from torch import nn
from analysis.workload.samples import DigitsCNN


def cnn():
    return DigitsCNN()


def rgb():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def broken():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            raise RuntimeError("this model always fails")
    return Broken()


def no_layers():
    return nn.Sequential(nn.Flatten(), nn.ReLU())


def not_a_model():
    return 42
'''


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory, workloads) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("formats")
    model = workloads["digits-cnn"].model
    x = workloads["digits-cnn"].data.x[:4]
    f = {"py": d / "models.py", "sd": d / "cnn.pt", "st": d / "cnn.safetensors", "ts": d / "cnn.ts",
         "pt2": d / "cnn.pt2", "pickle": d / "cnn-pickled.pt"}
    f["py"].write_text(FACTORY)
    torch.save(model.state_dict(), f["sd"])
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(f["st"]))
    torch.jit.save(torch.jit.trace(model, x), str(f["ts"]))
    batch = ({0: torch.export.Dim.DYNAMIC},)
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=batch), str(f["pt2"]))
    torch.save(model, f["pickle"])
    return f


@pytest.mark.parametrize("kind", ["ts", "pt2", "py+sd", "py+st"])
def test_model_formats_give_the_same_outputs(kind: str, files, workloads) -> None:
    wl = workloads["digits-cnn"]
    spec = {"ts": str(files["ts"]), "pt2": str(files["pt2"]), "py+sd": f"{files['py']}:cnn={files['sd']}",
            "py+st": f"{files['py']}:cnn={files['st']}"}[kind]
    model = load_model(spec, trust_code=True)
    x = wl.data.x[:16]
    torch.testing.assert_close(model(x), wl.model(x))
    loaded = load_workload(spec, "sample:digits", count=32, trust_code=True)
    layers = prepare(loaded, ScanConfig(sparsities=(0.5,))).layers
    assert [l.shape for l in layers] == [l.shape for l in prepare(wl, ScanConfig(sparsities=(0.5,))).layers]


def test_torchvision_with_a_state_dict_takes_its_class_count(tmp_path: Path) -> None:
    import torchvision

    source = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=5).eval()
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = load_model(f"torchvision:mobilenet_v3_small={tmp_path / 'w.pth'}")
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x), source(x))
    with pytest.raises(SpecError, match="no architecture 'resnet1'"):
        load_model("torchvision:resnet1")


@pytest.mark.parametrize("wrap", ["ddp-in-checkpoint", "lightning", "compiled"])
def test_training_checkpoints_load_their_state_dict(wrap: str, files, workloads, tmp_path: Path) -> None:
    wl = workloads["digits-cnn"]
    state = wl.model.state_dict()
    prefix = {"ddp-in-checkpoint": "module.", "lightning": "model.", "compiled": "_orig_mod."}[wrap]
    wrapped = {prefix + k: v for k, v in state.items()}
    checkpoint = {"ddp-in-checkpoint": {"epoch": 7, "model_state_dict": wrapped, "optimizer": {"lr": 0.1}},
                  "lightning": {"state_dict": wrapped, "global_step": 100},
                  "compiled": wrapped}[wrap]
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    model = load_model(f"{files['py']}:cnn={tmp_path / 'ckpt.pt'}", trust_code=True)
    x = wl.data.x[:8]
    torch.testing.assert_close(model(x), wl.model(x))


def test_a_checkpoint_without_weights_names_its_keys(files, tmp_path: Path) -> None:
    torch.save({"epoch": 3, "optimizer": {"lr": torch.tensor(0.1)}}, tmp_path / "ckpt.pt")
    with pytest.raises(SpecError, match=r"not a state dict of tensors \(its keys: epoch, optimizer\)"):
        load_model(f"{files['py']}:cnn={tmp_path / 'ckpt.pt'}", trust_code=True)


def test_pickled_module_needs_trust(files, workloads) -> None:
    with pytest.raises(SpecError, match="pickled Python object.*--trust-code"):
        load_model(str(files["pickle"]))
    model = load_model(str(files["pickle"]), trust_code=True)
    x = workloads["digits-cnn"].data.x[:4]
    torch.testing.assert_close(model(x), workloads["digits-cnn"].model(x))
    with pytest.raises(SpecError, match="state dict .*give the architecture too"):
        load_model(str(files["sd"]))


def test_cli_refuses_a_pickle_without_trust_and_runs_with_it(files, tmp_path: Path, prunescope_home: Path) -> None:
    args = ["scan", "--model", files["pickle"], "--data", "sample:digits", "--count", "32", "--sparsities", "0.5",
            "--layers", "fc", "--no-store", "--quiet", "--out", tmp_path / "out"]
    refused = run_cli(*args)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--trust-code" in refused.stderr
    trusted = run_cli(*args, "--trust-code")
    assert trusted.returncode == 0, trusted.stderr
    assert (tmp_path / "out" / "sensitivity.csv").is_file()
    assert not (prunescope_home / "runs.sqlite").exists()  # --no-store: the store is never touched


# ----------------------------------------------------------------------------------------------------- data


def _png(value: int, size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _image_tree(root: Path) -> Path:
    for label, value in (("cat", 0), ("dog", 255)):
        (root / label).mkdir(parents=True)
        for i in range(3):
            (root / label / f"{i}.png").write_bytes(_png(value))
    return root


def test_image_folder_size_normalisation_and_labels(tmp_path: Path) -> None:
    root = _image_tree(tmp_path / "imgs")
    raw = load_data(str(root), input_size=6, normalize="none")
    assert raw.x.shape == (6, 3, 6, 6) and raw.class_names == ["cat", "dog"]
    assert raw.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert raw.x[0].max() == 0 and raw.x[-1].min() == 1
    with pytest.raises(SpecError, match="unknown normalisation 'zscore'"):
        load_data(str(root), normalize="zscore")
    with pytest.raises(SpecError, match="input size must be a positive"):
        load_data(str(root), input_size=0)
    norm = load_data(str(root), input_size=6, normalize="imagenet")
    torch.testing.assert_close(norm.x[0, :, 0, 0], -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor(
        [0.229, 0.224, 0.225]))


def test_a_count_below_an_image_folders_size_takes_every_class(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for label, value in (("a", 0), ("b", 100), ("c", 200)):
        (root / label).mkdir(parents=True)
        for i in range(10):
            (root / label / f"{i}.png").write_bytes(_png(value))
    some = load_data(str(root), input_size=4, normalize="none", count=9)
    assert len(some) == 9 and set(some.y.tolist()) == {0, 1, 2}
    again = load_data(str(root), input_size=4, normalize="none", count=9)
    assert torch.equal(some.x, again.x) and torch.equal(some.y, again.y)


def test_a_one_channel_model_reads_an_image_folder_in_grayscale(tmp_path: Path, digits, workloads) -> None:
    root = tmp_path / "digits"
    for i, (x, y) in enumerate(zip(digits.x[:40], digits.y[:40])):
        (root / str(int(y))).mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[0].numpy() * 255).round().astype(np.uint8), mode="L").save(root / str(int(y)) / f"{i}.png")
    wl = load_workload("sample:digits-cnn", str(root), input_size=8, normalize="none")
    assert wl.data.x.shape[1:] == (1, 8, 8)
    order = torch.tensor([int(name) for name in wl.data.class_names])[wl.data.y]
    assert sorted(order.tolist()) == sorted(digits.y[:40].tolist())
    accuracy = (workloads["digits-cnn"].model(wl.data.x).argmax(1) == order).float().mean()
    assert accuracy > 0.9  # the same images, read back in grayscale
    with pytest.raises(SpecError, match="cannot run on"):
        load_workload("sample:digits-mlp", str(root), input_size=6, normalize="none")  # no fit either way


def test_zip_of_an_image_folder_loads_like_the_folder_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    root = _image_tree(tmp_path / "imgs")
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(root.rglob("*.png")):
            z.write(p, Path("imgs") / p.relative_to(root))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    from_zip = load_data(str(archive), input_size=6, normalize="none")
    from_dir = load_data(str(root), input_size=6, normalize="none")
    assert torch.equal(from_zip.x, from_dir.x) and torch.equal(from_zip.y, from_dir.y)
    assert list(scratch.iterdir()) == []


def test_zip_with_path_traversal_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a/0.png", _png(1))
        z.writestr("../../escaped.png", _png(2))
    with pytest.raises(SpecError, match="points outside the archive"):
        load_data(str(archive))
    assert not (tmp_path.parent / "escaped.png").exists()


def test_tensor_files_and_random_data(tmp_path: Path) -> None:
    x, y = torch.rand(10, 1, 8, 8), torch.arange(10) % 3
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    torch.save(x, tmp_path / "bare.pt")
    for spec in ("d.pt", "d.npz"):
        data = load_data(str(tmp_path / spec))
        assert torch.equal(data.x, x) and torch.equal(data.y, y)
    bare = load_data(str(tmp_path / "bare.pt"), count=4)
    assert bare.y is None and torch.equal(bare.x, x[:4])
    rnd = load_data("random:3x5x5", count=7)
    assert rnd.x.shape == (7, 3, 5, 5) and not rnd.labelled
    assert torch.equal(load_data("random:3x5x5", count=7).x, rnd.x)


TOKEN_MODEL = '''
import torch
from torch import nn


class TextNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, tokens):
        return self.fc2(torch.relu(self.fc1(self.emb(tokens).mean(1))))


def build():
    torch.manual_seed(0)
    return TextNet()
'''


def test_token_ids_stay_integers_through_scan_schedule_and_export(tmp_path: Path, prunescope_home: Path) -> None:
    (tmp_path / "text.py").write_text(TOKEN_MODEL)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50, (40, 6), generator=gen, dtype=torch.int32)
    torch.save({"x": tokens, "y": torch.randint(0, 3, (40,), generator=gen)}, tmp_path / "tokens.pt")
    data = load_data(str(tmp_path / "tokens.pt"))
    assert data.x.dtype == torch.int64 and torch.equal(data.x, tokens.long())
    model, data_spec = f"{tmp_path / 'text.py'}:build", str(tmp_path / "tokens.pt")
    scan = run_cli("scan", "--model", model, "--data", data_spec, "--granularity", "channel",
                   "--sparsities", "0.25,0.5", "--quiet", "--trust-code", "--out", tmp_path / "scan")
    assert scan.returncode == 0, scan.stderr
    schedule = run_cli("schedule", "--scan", tmp_path / "scan", "--target-sparsity", "0.25", "--quiet",
                       "--trust-code", "--out", tmp_path / "s.json")
    assert schedule.returncode == 0, schedule.stderr
    export = run_cli("export", "--model", model, "--data", data_spec, "--schedule", tmp_path / "s.json",
                     "--trust-code", "--out", tmp_path / "text.onnx")
    assert export.returncode == 0, export.stderr
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "text.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(int64)"
    logits = session.run(None, {session.get_inputs()[0].name: tokens[:4].long().numpy()})[0]
    assert logits.shape == (4, 3)


# ---------------------------------------------------------------------------------------------- broken inputs


@pytest.mark.parametrize("content, match", [
    (b"", "is empty"),
    (b"hello, I am a text file\n", "not a model file"),
    (b"PK\x03\x04garbage", "damaged or truncated"),
])
def test_broken_model_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(SpecError, match=match):
        load_model(str(path))


@pytest.mark.parametrize("kind", ["ts", "pt2"])
def test_truncated_model_archives(kind: str, files, tmp_path: Path) -> None:
    data = files[kind].read_bytes()
    path = tmp_path / f"cut.{kind}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpecError, match="cut"):
        load_model(str(path))


@pytest.mark.parametrize("content, name, match", [
    (b"", "d.pt", "is empty"),
    (b"x,y\n1,2\n", "d.pt", r"d.pt is not a torch.save or .npz file \(its content is text"),
    (b"not an npz", "d.npz", r"d.npz is not a torch.save or .npz file"),
    (b"nope", "d.zip", r"d.zip is not a torch.save or .npz file"),
    (b"PK\x05\x06" + bytes(18), "d.zip", r"d.zip is a zip archive that holds no images: expected .*class"),
])
def test_broken_data_files(tmp_path: Path, content: bytes, name: str, match: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SpecError, match=match):
        load_data(str(path))


def test_truncated_tensor_file(tmp_path: Path) -> None:
    torch.save({"x": torch.rand(50, 1, 8, 8)}, tmp_path / "d.pt")
    data = (tmp_path / "d.pt").read_bytes()
    (tmp_path / "d.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(SpecError, match="d.pt.*damaged or truncated"):
        load_data(str(tmp_path / "d.pt"))


def test_fit_checks_name_shape_and_class_count(files, digits, workloads) -> None:
    model = workloads["digits-mlp"].model
    with pytest.raises(SpecError, match=r"inputs of shape \[3, 5, 5\].*failed"):
        check_fit(model, load_data("random:3x5x5", count=4), "the mlp")
    small = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    with pytest.raises(SpecError, match="labels of sample:digits run from 0 to 9, but the head has 5 classes"):
        check_fit(small, digits, "the head")
    with pytest.raises(SpecError, match="always fails"):
        load_workload(f"{files['py']}:broken", "sample:digits", trust_code=True)
    with pytest.raises(SpecError, match="returned int, not a torch.nn.Module"):
        load_model(f"{files['py']}:not_a_model", trust_code=True)


def test_nan_and_inf_weights_are_named(workloads, digits) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    with pytest.raises(SpecError, match=r"NaN or infinite values in 1\.weight"):
        check_fit(model, digits, "m")
    with torch.no_grad():
        model[1].weight[0, 0] = float("inf")
    with pytest.raises(SpecError, match="NaN or infinite"):
        check_fit(model, digits, "m")


def test_nan_data_is_named(workloads) -> None:
    from analysis.core.data import EvalData

    data = EvalData(torch.full((4, 1, 8, 8), float("nan")), None, "nan.pt")
    with pytest.raises(SpecError, match="the data nan.pt contains NaN or infinite values"):
        check_fit(workloads["digits-mlp"].model, data, "m")


@pytest.mark.parametrize("case", ["no-layers", "labels"])
def test_cli_reports_hostile_inputs_in_one_line(case: str, files, tmp_path: Path) -> None:
    model, data = "sample:digits-mlp", "sample:digits"
    if case == "no-layers":
        model, match = f"{files['py']}:no_layers", "has no prunable layers"
    else:
        torch.save({"x": torch.rand(4, 1, 8, 8), "y": torch.tensor([0, 1, 2, 12])}, tmp_path / "d.pt")
        data, match = str(tmp_path / "d.pt"), "labels .* run from 0 to 12, but .* has 10 classes"
    res = run_cli("scan", "--model", model, "--data", data, "--sparsities", "0.5", "--quiet", "--trust-code",
                  "--out", tmp_path / "o")
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("prunescope: error:") and res.stderr.count("\n") == 1
    assert re.search(match, res.stderr), res.stderr


# ------------------------------------------------------------------------------------- messages for new users


ANSI_OR_UNSAFE = re.compile(r"\x1b\[|weights_only|Re-running|prunescope-images-")


def test_tensor_files_holding_other_objects_say_what_was_found(tmp_path: Path) -> None:
    torch.save({"x": np.zeros((4, 1, 8, 8), dtype=np.float32)}, tmp_path / "np.pt")
    with pytest.raises(SpecError, match=r"np.pt cannot be read: it holds Python objects other than tensors "
                                        r"\(found numpy[\w.]*_reconstruct\).*torch.from_numpy") as err:
        load_data(str(tmp_path / "np.pt"))
    assert not ANSI_OR_UNSAFE.search(str(err.value)), err.value


def test_zip_data_errors_name_the_zip_and_its_entry(tmp_path: Path) -> None:
    flat = tmp_path / "flat.zip"
    with zipfile.ZipFile(flat, "w") as z:
        z.writestr("0.png", _png(1))
    with pytest.raises(SpecError, match=r"flat.zip is not an image folder \(one sub-folder per class") as err:
        load_data(str(flat))
    assert not ANSI_OR_UNSAFE.search(str(err.value)), err.value
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("cat/0.png", _png(1))
        z.writestr("dog/1.png", b"not a png")
    with pytest.raises(SpecError, match=r"cannot read image .*broken.zip/dog/1.png") as err:
        load_data(str(broken))
    assert not ANSI_OR_UNSAFE.search(str(err.value)), err.value


@pytest.mark.parametrize("content, match", [
    (b"hello, not weights\n", r"w.pth is not a state-dict file \(torch.save or .safetensors\); its content is text"),
    (b"", r"weights file .*w.pth is empty"),
])
def test_weights_that_are_not_a_state_dict_file(content: bytes, match: str, files, tmp_path: Path) -> None:
    (tmp_path / "w.pth").write_bytes(content)
    with pytest.raises(SpecError, match=match):
        load_model(f"{files['py']}:cnn={tmp_path / 'w.pth'}", trust_code=True)


def test_safetensors_weights_are_read_by_content_and_need_an_architecture(files, workloads, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"cnn.safetensors is a state dict .*give the architecture too: "
                                        r"torchvision:ARCH=.*model.py:factory="):
        load_model(str(files["st"]))
    renamed = tmp_path / "cnn.pth"  # safetensors content under a torch name
    renamed.write_bytes(files["st"].read_bytes())
    model = load_model(f"{files['py']}:cnn={renamed}", trust_code=True)
    x = workloads["digits-cnn"].data.x[:4]
    torch.testing.assert_close(model(x), workloads["digits-cnn"].model(x))


@pytest.mark.parametrize("spec", ["torchvision:resnet18=", "{py}:cnn="])
def test_an_equals_sign_without_weights_is_an_error(spec: str, files) -> None:
    with pytest.raises(SpecError, match="ends in '=' with no weights file"):
        load_model(spec.format(py=files["py"]), trust_code=True)


@pytest.mark.parametrize("arch, suffix", [("squeezenet1_0", ".pth"), ("squeezenet1_0", ".safetensors"),
                                          ("mobilenet_v2", ".pth"), ("resnet18", ".safetensors"),
                                          ("googlenet", ".pth")])
def test_torchvision_class_count_from_conv_and_linear_classifiers(arch: str, suffix: str, tmp_path: Path) -> None:
    """The classifier is found in the architecture's order: safetensors files list their keys sorted."""
    import torchvision
    from safetensors.torch import save_file

    extra = {"aux_logits": False, "init_weights": False} if arch == "googlenet" else {}
    source = torchvision.models.get_model(arch, weights=None, num_classes=10, **extra).eval()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save(source.state_dict(), path)
    model = load_model(f"torchvision:{arch}={path}")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (1, 10)
        torch.testing.assert_close(model(x), source(x))


def test_a_torchscript_model_that_fails_on_a_batch_is_named(tmp_path: Path) -> None:
    from analysis.workload.usercode import model_failure

    class Small(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(Small(), torch.rand(2, 4)), str(tmp_path / "small.ts"))
    model = load_model(str(tmp_path / "small.ts"), trust_code=True)
    with pytest.raises(RuntimeError) as err:
        model(torch.rand(2, 5))
    line = model_failure(err.value, "small.ts")
    assert line is not None and line.startswith("small.ts failed on a batch of the data: ") and "\n" not in line
    assert "mat1 and mat2" in line, line
    try:
        torch.rand(2, 5) @ torch.rand(4, 3)  # the same error raised outside the model
    except RuntimeError as ours:
        assert model_failure(ours, "small.ts") is None


BINARY_MODEL = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1))
'''


def test_a_binary_classifier_with_one_logit_and_layers_named_by_index(tmp_path: Path, digits) -> None:
    """A single logit runs through scan, schedule and export. Its layers, an ``nn.Sequential``'s, are named ``1``
    and ``3``: names, also after a round trip through the CSV and through hand-written YAML."""
    (tmp_path / "binary.py").write_text(BINARY_MODEL)
    torch.save({"x": digits.x[:120], "y": (digits.y[:120] == 0).long()}, tmp_path / "binary.pt")
    model, data = f"{tmp_path / 'binary.py'}:build", str(tmp_path / "binary.pt")
    scan = run_cli("scan", "--model", model, "--data", data, "--sparsities", "0.5,0.9", "--no-store", "--quiet",
                   "--trust-code", "--out", tmp_path / "scan")
    assert scan.returncode == 0, scan.stderr
    from analysis.core.profile import SensitivityProfile

    table = SensitivityProfile.load(tmp_path / "scan").table
    assert set(table["layer"]) == {"1", "3"}
    assert table["kl"].max() > 0 and table["loss"].nunique() > 1
    schedule = run_cli("schedule", "--scan", tmp_path / "scan", "--target-sparsity", "0.5", "--quiet",
                       "--out", tmp_path / "s.yaml")
    assert schedule.returncode == 0, schedule.stderr
    (tmp_path / "hand.yaml").write_text("sparsities:\n  1: 0.5\n  3: 0.25\n")  # YAML reads these keys as ints
    from analysis.schedule.schedule import Schedule

    assert Schedule.load(tmp_path / "hand.yaml").sparsities == {"1": 0.5, "3": 0.25}
    export = run_cli("export", "--model", model, "--data", data, "--schedule", tmp_path / "s.yaml",
                     "--trust-code", "--out", tmp_path / "binary.onnx")
    assert export.returncode == 0, export.stderr
