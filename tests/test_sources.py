"""Workloads from specs: samples, torchvision, files the tests make, and every way a spec can be wrong."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from analysis.workload.data import load_data
from analysis.workload.errors import SpecError
from analysis.workload.models import load_model
from analysis.workload.workload import check_fit, load_workload


def test_samples_load_in_eval_mode_and_reach_their_recorded_accuracy(workloads):
    from analysis.workload.samples import sample_info

    for name, w in workloads.items():
        assert not w.model.training
        acc = (w.model(w.data.x).argmax(1) == w.data.y).float().mean().item()
        assert acc == pytest.approx(sample_info(name).test_accuracy, abs=1e-3)
        assert w.num_classes == 10 and w.input_shape == (1, 8, 8)
    assert sample_info("digits-cnn").test_accuracy >= 0.97


def test_digits_split_is_fixed_and_disjoint():
    a, b = load_data("sample:digits"), load_data("sample:digits")
    assert torch.equal(a.x, b.x) and len(a) == 449
    train = load_data("sample:digits-train")
    assert len(train) + len(a) == 1797


def test_digits_read_without_sklearn_equal_sklearns_loader():
    from sklearn.datasets import load_digits as from_sklearn

    from analysis.workload.samples import load_digits

    images, target = load_digits()
    reference = from_sklearn()
    assert np.array_equal(images, reference.images) and np.array_equal(target, reference.target)


def test_random_data_is_seeded_and_label_free():
    d = load_data("random:3x16x16", count=10)
    assert d.x.shape == (10, 3, 16, 16) and d.y is None
    assert torch.equal(d.x, load_data("random:3x16x16", count=10).x)
    with pytest.raises(SpecError, match="random:3x32x32"):
        load_data("random:3xbig")


def test_image_folder(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray((np.random.rand(20, 30, 3) * 255).astype("uint8")).save(tmp_path / cls / f"{i}.png")
    d = load_data(str(tmp_path), input_size=16)
    assert d.x.shape == (4, 3, 16, 16) and d.y.tolist() == [0, 0, 1, 1] and d.class_names == ["cat", "dog"]


def test_torchvision_random_init_and_state_dict(tmp_path):
    import torchvision

    model = torchvision.models.get_model("resnet18", num_classes=7)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    loaded = load_model(f"torchvision:resnet18={tmp_path / 'w.pth'}")
    assert torch.equal(loaded.fc.weight, model.fc.weight) and not loaded.training
    with pytest.raises(SpecError, match="no architecture"):
        load_model("torchvision:resnet19000")


def test_python_factory_with_state_dict(tmp_path):
    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\n"
        "def build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n")
    ref = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    torch.save(ref.state_dict(), tmp_path / "net.pth")
    m = load_model(f"{tmp_path / 'net.py'}:build={tmp_path / 'net.pth'}", trust_code=True)
    assert torch.equal(m[1].weight, ref[1].weight)


def test_model_and_data_that_do_not_fit_name_both_sides(tmp_path):
    torch.save({"x": torch.rand(4, 3, 8, 8)}, tmp_path / "rgb.pt")
    with pytest.raises(SpecError) as err:
        load_workload("sample:digits-cnn", str(tmp_path / "rgb.pt"))
    assert "sample:digits-cnn" in str(err.value) and "[3, 8, 8]" in str(err.value)
    torch.save({"x": torch.rand(4, 1, 8, 8), "y": torch.tensor([0, 1, 2, 12])}, tmp_path / "labels.pt")
    with pytest.raises(SpecError, match="labels .* run from 0 to 12.* 10 classes"):
        load_workload("sample:digits-cnn", str(tmp_path / "labels.pt"))


@pytest.mark.parametrize("spec,match", [
    ("missing.pt", "does not exist"),
    ("sample:nope", "no bundled sample"),
    ("", "empty model spec"),
])
def test_bad_model_specs(spec, match):
    with pytest.raises(SpecError, match=match):
        load_model(spec)


def test_state_dict_without_architecture_and_pickled_module(tmp_path):
    model = nn.Sequential(nn.Linear(4, 2))
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(SpecError, match="state dict"):
        load_model(str(tmp_path / "sd.pt"))
    torch.save(model, tmp_path / "full.pt")
    with pytest.raises(SpecError, match="--trust-code"):
        load_model(str(tmp_path / "full.pt"))
    assert isinstance(load_model(str(tmp_path / "full.pt"), trust_code=True), nn.Sequential)
    assert isinstance(load_model(str(tmp_path / "full.pt"), trust_pickle=True), nn.Sequential)  # the older name


def test_nan_weights_are_refused(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    with pytest.raises(SpecError, match="NaN"):
        check_fit(model, digits, "m")


def test_torchscript_and_torch_export_files(tmp_path, digits):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10)).eval()
    example = torch.randn(2, 1, 8, 8)
    torch.jit.save(torch.jit.trace(model, example), tmp_path / "m.ts")
    dynamic = torch.export.export(model, (example,), dynamic_shapes={"input": {0: torch.export.Dim("batch")}})
    torch.export.save(dynamic, tmp_path / "m.pt2")
    torch.export.save(torch.export.export(model, (example,)), tmp_path / "static.pt2")
    with torch.no_grad():
        expected = model(digits.x[:5])
    for name in ("m.ts", "m.pt2"):
        w = load_workload(str(tmp_path / name), "sample:digits", trust_code=True)
        with torch.no_grad():
            assert torch.allclose(w.model(digits.x[:5]), expected, atol=1e-5)
    with pytest.raises(SpecError, match="dynamic batch"):
        load_workload(str(tmp_path / "static.pt2"), "sample:digits", trust_code=True)


@pytest.mark.parametrize("body, match", [
    ("def build(n):\n    return None\n", r"net.py:build\(\) failed: TypeError: .*missing 1 required positional"),
    ("def build():\n    raise RuntimeError('no GPU here')\n", r"net.py:build\(\) failed: RuntimeError: no GPU here"),
    ("def build():\n    raise ValueError('bad config')\n", r"net.py:build\(\) failed: ValueError: bad config"),
])
def test_a_factory_that_raises_is_named(tmp_path, body, match):
    (tmp_path / "net.py").write_text(body)
    with pytest.raises(SpecError, match=match):
        load_model(f"{tmp_path / 'net.py'}:build", trust_code=True)


class _Divides(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) / (x.flatten(1)[:, :1] > 100).float()  # inf (or nan) for every sample


def test_nan_or_inf_outputs_are_refused_at_the_fit_check(digits):
    with pytest.raises(SpecError, match="m returns NaN or infinite outputs on the first inputs of sample:digits"):
        check_fit(_Divides(), digits, "m")
