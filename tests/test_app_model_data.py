"""The Model & data page: samples, torchvision, uploads of models and data, and every way they can be wrong."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from app_support import ROOT, app, assert_clean, plotly_specs, texts
from streamlit.testing.v1 import AppTest

from analysis.core.layers import find_layers
from analysis.workload import samples
from ui.common import WorkloadSpec


def _use(at):  # noqa: ANN001, ANN202
    at.button[0].click()
    return at.run()


def _pick(at, model_kind: str | None = None, data_kind: str | None = None):  # noqa: ANN001, ANN202
    if model_kind:
        at.radio(key="model_kind").set_value(model_kind)
    if data_kind:
        at.radio(key="data_kind").set_value(data_kind)
    return at.run()


def _torch_bytes(obj) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_the_sample_is_preselected_with_its_layer_summary():
    at = app("model")
    assert_clean(at)
    assert at.selectbox[0].value == "digits-cnn"
    table = at.dataframe[0].value
    assert list(table["layer"]) == ["block1.0", "block2.0", "block3.0", "fc"]
    assert list(table["params"]) == [144, 4608, 18432, 640]
    assert table["params %"].sum() == pytest.approx(100, abs=0.05)
    [bar] = plotly_specs(at)
    assert [t["name"] for t in bar["data"]] == ["parameters", "FLOPs"]
    assert bar["data"][0]["x"] == list(table["layer"])
    assert sum(bar["data"][0]["y"]) == pytest.approx(100)


def test_picking_another_sample_switches_the_workload():
    at = app("model")
    at.selectbox[0].set_value("digits-mlp")
    at = _use(at.run())
    assert_clean(at)
    assert at.session_state["workload"] == WorkloadSpec("sample:digits-mlp", "sample:digits")
    expected = [l.name for l in find_layers(samples.load_sample("digits-mlp"), torch.zeros(1, 1, 8, 8))]
    assert list(at.dataframe[0].value["layer"]) == expected
    assert "digits-mlp" in texts(at.success)


def _squeezenet_on_eight_random_inputs():  # noqa: ANN202 - AppTest
    at = _pick(app("model"), "torchvision architecture", "Random inputs (no labels)")
    at.selectbox[0].set_value("squeezenet1_1")
    at.text_input[0].set_value("3x32x32")
    at.number_input[0].set_value(8)
    return _use(at.run())


def test_torchvision_on_random_inputs_with_a_count():
    at = _squeezenet_on_eight_random_inputs()
    assert_clean(at)
    spec = at.session_state["workload"]
    assert (spec.model, spec.data, spec.count) == ("torchvision:squeezenet1_1", "random:3x32x32", 8)
    assert "8 (no labels)" in [m.value for m in at.metric]
    assert len(at.dataframe[0].value) == 26


def test_torchvision_weights_upload_that_does_not_fit_is_a_readable_error():
    at = _pick(app("model"), "torchvision architecture", "Random inputs (no labels)")
    at.selectbox[0].set_value("squeezenet1_1")
    at.file_uploader[0].upload("weights.pth", _torch_bytes({"features.0.weight": torch.zeros(3, 3)}))
    at = _use(at.run())
    assert_clean(at)
    assert "do not fit the architecture" in texts(at.error)
    assert at.session_state["workload"] == WorkloadSpec(), "a failed load must keep the previous workload"


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_program_uploads_load_on_a_server_that_takes_them(fmt, monkeypatch):
    monkeypatch.setenv("PRUNESCOPE_ALLOW_CODE_UPLOADS", "1")  # prunescope dashboard --allow-code-uploads
    model = samples.load_sample("digits-cnn").eval()
    buf = io.BytesIO()
    if fmt == "torchscript":
        torch.jit.save(torch.jit.script(model), buf)
        name = "cnn.pt"
    else:
        batch = {"x": {0: torch.export.Dim("batch")}}
        torch.export.save(torch.export.export(model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=batch), buf)
        name = "cnn.pt2"
    at = _pick(app("model"), "Upload a model file")
    at.file_uploader[0].upload(name, buf.getvalue())
    at = _use(at.run())
    assert_clean(at)
    assert at.session_state["workload"].model.endswith(name[name.index("."):])
    assert list(at.dataframe[0].value["params"]) == [144, 4608, 18432, 640]


class _Hostile:
    """Unpickling this writes a file: proof that an upload was executed."""

    target = ""

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.target, "w"))


@pytest.mark.parametrize("content", ["pickle", "junk", "empty", "numpy"])
def test_bad_model_uploads_are_refused_without_running_them(tmp_path, content):
    marker = tmp_path / "was-unpickled"
    _Hostile.target = str(marker)
    numpy = io.BytesIO()
    np.savez(numpy, x=np.zeros(3))
    data = {"pickle": _torch_bytes(_Hostile()), "junk": b"not a model at all" * 10, "empty": b"",
            "numpy": numpy.getvalue()}[content]
    at = _pick(app("model"), "Upload a model file")
    at.file_uploader[0].upload("model.pt", data)
    at = at.run()
    assert_clean(at)
    message = texts(at.error)
    assert {"pickle": "never unpickled", "junk": "is not a model", "empty": "is empty",
            "numpy": "its content reads as a numpy .npz archive"}[content] in message
    assert at.button[0].disabled, "a refused upload cannot be used"
    assert not marker.exists(), "the upload was unpickled"
    assert at.session_state["workload"] == WorkloadSpec()


def test_uploads_are_typed_by_content_not_by_name(monkeypatch):
    monkeypatch.setenv("PRUNESCOPE_ALLOW_CODE_UPLOADS", "1")
    model = samples.load_sample("digits-cnn").eval()
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buf)
    at = _pick(app("model"), "Upload a model file")
    at.file_uploader[0].upload("model.onnx", buf.getvalue())  # a TorchScript file with the wrong name
    at = _use(at.run())
    assert_clean(at)
    assert at.session_state["workload"].model.endswith("upload.pt")
    assert list(at.dataframe[0].value["params"]) == [144, 4608, 18432, 640]

    at = _pick(app("model"), "torchvision architecture", "Random inputs (no labels)")
    at.file_uploader[0].upload("weights.pth", buf.getvalue())  # a whole model is not a state dict
    at = at.run()
    assert_clean(at)
    assert "holds a TorchScript model, which this box does not take" in texts(at.error)


def test_the_upload_size_limit_is_a_readable_error(monkeypatch):
    from analysis.workload import uploads

    monkeypatch.setattr(uploads, "DEFAULT_MAX_BYTES", 1000)
    at = _pick(app("model"), data_kind="Upload tensors (.pt, .npz)")
    at.file_uploader[0].upload("big.pt", _torch_bytes({"x": torch.zeros(100, 8)}))
    at = at.run()
    assert_clean(at)
    assert "the upload limit is" in texts(at.error)


def test_no_upload_yet_keeps_the_button_off_and_says_what_is_missing():
    at = _pick(app("model"), "Upload a model file", "Upload tensors (.pt, .npz)")
    assert_clean(at)
    assert at.button[0].disabled
    assert "Upload a file" in texts(at.info)


def test_tensor_data_upload_and_its_errors():
    x, y = samples.digits_split()[2:]
    good = io.BytesIO()
    np.savez(good, x=x[:40].numpy(), y=y[:40].numpy())
    at = _pick(app("model"), data_kind="Upload tensors (.pt, .npz)")
    at.file_uploader[0].upload("digits.npz", good.getvalue())
    at = _use(at.run())
    assert_clean(at)
    assert at.session_state["workload"].data.endswith(".npz")
    assert "40" in [m.value for m in at.metric]

    at = _pick(app("model"), data_kind="Upload tensors (.pt, .npz)")
    at.file_uploader[0].upload("bad.pt", _torch_bytes({"x": x[:10], "y": y[:7]}))
    at = _use(at.run())
    assert_clean(at)
    assert "has 10 inputs but 7 labels" in texts(at.error)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _png(value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_image_zip_upload_becomes_an_image_folder():
    archive = _zip({f"data/{c}/{i}.png": _png(40 * i) for c in ("cat", "dog") for i in range(3)})
    at = _pick(app("model"), "torchvision architecture", "Upload images (.zip of class folders)")
    at.selectbox[0].set_value("squeezenet1_1")
    at.number_input[0].set_value(32)
    at.file_uploader[1].upload("images.zip", archive)
    at = _use(at.run())
    assert_clean(at)
    spec = at.session_state["workload"]
    assert spec.data.endswith("data") and spec.input_size == 32
    assert "6" in [m.value for m in at.metric]


@pytest.mark.parametrize("archive,message", [
    (_zip({"../escape.png": b"x"}), "points outside"),
    (b"PK\x03\x04 broken", "damaged or truncated"),
])
def test_hostile_or_broken_zip_is_refused(archive, message):
    at = _pick(app("model"), data_kind="Upload images (.zip of class folders)")
    at.file_uploader[0].upload("images.zip", archive)
    at = at.run()
    assert_clean(at)
    assert message in texts(at.error)
    assert at.button[0].disabled


def test_random_data_with_a_bad_shape_is_a_readable_error():
    at = _pick(app("model"), data_kind="Random inputs (no labels)")
    at.text_input[0].set_value("3xx32")
    at = _use(at.run())
    assert_clean(at)
    assert "random:3x32x32" in texts(at.error)


def test_a_refused_weights_upload_keeps_the_button_off():
    """A refused weights file must not fall back to the architecture's random weights."""
    at = _pick(app("model"), "torchvision architecture", "Random inputs (no labels)")
    at.file_uploader[0].upload("weights.pth", b"hello, I am not a state dict\n")
    at = at.run()
    assert_clean(at)
    assert texts(at.error) and at.button[0].disabled


def test_the_workload_survives_a_reload_through_the_page_address():
    at = _squeezenet_on_eight_random_inputs()
    chosen = at.session_state["workload"]
    address = {k: at.query_params[k] for k in ("model", "data", "count", "size")}
    assert address == {"model": "torchvision:squeezenet1_1", "data": "random:3x32x32", "count": "8", "size": "224"}
    reloaded = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)  # a new session, the same address
    for key, value in address.items():
        reloaded.query_params[key] = value
    reloaded.switch_page("pages/2_Sensitivity.py")
    reloaded = reloaded.run()
    assert_clean(reloaded)
    assert reloaded.session_state["workload"] == chosen


def test_a_page_address_names_only_what_the_pages_offer(tmp_path, monkeypatch):
    from ui.common import spec_from_address

    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path))
    folder = tmp_path / "uploads" / "0123456789abcdef"
    folder.mkdir(parents=True)
    (folder / "upload.pt").write_bytes(_torch_bytes({"w": torch.zeros(1)}))
    ok = spec_from_address({"model": "torchvision:resnet18=uploaded:0123456789abcdef/upload.pt",
                            "data": "random:3x8x8", "count": "4", "size": "32"})
    assert ok == WorkloadSpec(f"torchvision:resnet18={folder / 'upload.pt'}", "random:3x8x8", 4, 32)
    for model in ("/etc/passwd", "uploaded:../../etc/passwd", "uploaded:0123456789abcdef/missing.pt",
                  "model.py:build", "torchvision:resnet18=/etc/passwd", "uploaded:0123456789abcdef/upload.pt"):
        assert spec_from_address({"model": model, "data": "sample:digits"}) is None, model
    assert spec_from_address({"model": "sample:digits-cnn", "data": "sample:digits", "count": "-1"}) is None
