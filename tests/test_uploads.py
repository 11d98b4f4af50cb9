"""Uploaded bytes: typed by content, size-limited, never unpickled, always cleaned up."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.workload.data import load_data
from analysis.workload.models import load_model
from analysis.workload.uploads import UploadError, received, safe_extract


@pytest.fixture(scope="module")
def model_bytes(workloads) -> dict[str, bytes]:
    import warnings

    from safetensors.torch import save

    model = workloads["digits-mlp"].model
    out = {"safetensors": save({k: v.contiguous() for k, v in model.state_dict().items()})}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), buf)
    out["torchscript"] = buf.getvalue()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(2, 1, 8, 8),), buf, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "b"}})
    out["onnx"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save(model, buf)
    out["pickled-module"] = buf.getvalue()
    return out


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_model_uploads_are_typed_by_content_whatever_their_name(kind: str, model_bytes, workloads) -> None:
    with received(model_bytes[kind], "innocent.txt", "model") as up:
        assert up.kind == kind and up.path.is_file() and up.size == len(model_bytes[kind])
        model = load_model(str(up.path), trust_code=kind == "torchscript")
        x = workloads["digits-mlp"].data.x[:8]
        torch.testing.assert_close(model(x), workloads["digits-mlp"].model(x), atol=1e-5, rtol=1e-5)
        folder = up.path.parent
    assert not folder.exists()


def test_safetensors_upload_is_recognised(model_bytes) -> None:
    with received(model_bytes["safetensors"], "weights.bin", "model") as up:
        assert up.kind == "safetensors" and up.path.suffix == ".safetensors"


def test_pickles_are_refused_and_never_unpickled(model_bytes, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):  # noqa: ANN204
            return (Path.touch, (marker,))

    payload = pickle.dumps(Boom())
    with pytest.raises(UploadError, match="pickle stream; unpickling runs code.*Export the model"):
        with received(payload, "model.pkl", "model"):
            pass
    with pytest.raises(UploadError, match="pickle stream; unpickling runs code.*torch.save.*numpy.savez"):
        with received(payload, "data.pkl", "data"):
            pass
    assert not marker.exists()
    with received(model_bytes["pickled-module"], "model.pt", "model") as up:
        assert up.kind == "torch-save"
        with pytest.raises(Exception, match="pickled Python object.*--trust-code"):
            load_model(str(up.path))


def test_size_limit_empty_and_wrong_role(model_bytes) -> None:
    with pytest.raises(UploadError, match="upload limit is 1 MiB"):
        with received(b"\x08" * (2 << 20), "big.onnx", "model", max_bytes=1 << 20):
            pass
    with pytest.raises(UploadError, match="is empty"):
        with received(b"", "x.onnx", "model"):
            pass
    with pytest.raises(UploadError, match="not data .*reads as an ONNX model"):
        with received(model_bytes["onnx"], "data.npz", "data"):
            pass
    with pytest.raises(UploadError, match="not a model .*reads as text or an unknown format"):
        with received(b"just some text", "../../etc/model.onnx", "model"):
            pass


def test_data_uploads_npz_and_image_zip(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=np.arange(6) % 2)
    with received(buf.getvalue(), "d.pt", "data") as up:
        assert up.kind == "npz"
        assert np.array_equal(load_data(str(up.path)).x.numpy(), x)
    from PIL import Image

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for label in ("a", "b"):
            img = io.BytesIO()
            Image.new("RGB", (5, 5), (10, 20, 30)).save(img, format="PNG")
            z.writestr(f"set/{label}/0.png", img.getvalue())
        z.writestr("__MACOSX/set/._junk", b"x")
    with received(archive.getvalue(), "set.zip", "data") as up:
        assert up.kind == "images-zip" and up.path.is_dir() and sorted(p.name for p in up.path.iterdir()) == ["a", "b"]
        data = load_data(str(up.path), input_size=4, normalize="none")
        assert data.x.shape == (2, 3, 4, 4) and data.class_names == ["a", "b"]
        root = up.path
    assert not root.exists()


def _zip(entries: dict[str, bytes], path: Path, symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            z.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize("entries, symlink, match", [
    ({"../up.png": b"x"}, None, "points outside"),
    ({"/abs/a.png": b"x"}, None, "points outside"),
    ({"c:/win/a.png": b"x"}, None, "points outside"),
    ({"a/0.png": b"x"}, "a/link.png", "is a link"),
    ({"a/bomb.png": b"\0" * (3 << 20)}, None, "more than 2 MiB"),
])
def test_unsafe_archives_are_refused(tmp_path: Path, entries, symlink, match) -> None:
    archive = _zip(entries, tmp_path / "x.zip", symlink)
    dest = tmp_path / "out"
    with pytest.raises(UploadError, match=match):
        safe_extract(archive, dest, max_bytes=2 << 20)
    assert not (tmp_path / "up.png").exists()


def test_too_many_files_are_refused(tmp_path: Path) -> None:
    archive = _zip({f"a/{i}.png": b"x" for i in range(12)}, tmp_path / "x.zip")
    with pytest.raises(UploadError, match="12 files; the limit is 10"):
        safe_extract(archive, tmp_path / "out", max_files=10)


def test_check_names_the_kind_and_the_suffix_from_content(model_bytes) -> None:
    from analysis.workload.uploads import check

    assert check(model_bytes["onnx"], "weights.pth", "model") == ("onnx", ".onnx")
    assert check(model_bytes["safetensors"], "x.onnx", "model") == ("safetensors", ".safetensors")
    with pytest.raises(UploadError, match="pickle"):
        check(b"\x80\x04K\x01.", "model.onnx", "model")


def test_a_truncated_onnx_file_is_called_one(model_bytes) -> None:
    with pytest.raises(UploadError, match="reads as a truncated or corrupt ONNX file"):
        with received(model_bytes["onnx"][: len(model_bytes["onnx"]) // 2], "model.onnx", "model"):
            pass
