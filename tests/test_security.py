"""Untrusted files stay data: every attack found on the loaders, the uploads, the page address and the store.

Each hostile file makes a marker file if its code runs; each test asserts that the marker is absent and that the
user sees one line (CLI: exit code 2, one line on stderr; dashboard: a message, no exception).
"""

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from app_support import ROOT, app, assert_clean, texts
from conftest import cli_env, run_cli
from streamlit.testing.v1 import AppTest

from analysis.workload.errors import SpecError
from analysis.workload.models import load_model
from analysis.workload.uploads import UploadError, received
from analysis.workload.workload import load_workload


class Marker:
    """Unpickling this creates ``path``: proof that a file's code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


def one_line_error(res: subprocess.CompletedProcess, *fragments: str) -> None:
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("prunescope: error: "), res.stderr
    assert "Traceback" not in res.stderr
    for fragment in fragments:
        assert fragment in res.stderr, res.stderr


def scan_args(model: str, data: str, out: Path, *extra: str) -> list[str]:
    return ["scan", "--model", model, "--data", data, "--count", "16", "--sparsities", "0.5", "--no-store",
            "--quiet", "--out", str(out), *extra]


# ------------------------------------------------------------------------------------------ .pt2 programs


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _pt2(path: Path) -> Path:
    program = torch.export.export(Tiny().eval(), (torch.rand(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return path


def _rewrite(src: Path, dst: Path, edit) -> Path:  # noqa: ANN001
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, edit(info.filename, zin.read(info.filename)))
    return dst


def _pickled(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture()
def evil_pt2(tmp_path: Path) -> dict[str, Path]:
    """Two .pt2 files that run code when torch.export.load reads them: a pickled sample input (torch retries
    its safe load with weights_only=False) and a weight marked use_pickle."""
    marker = tmp_path / "pt2-ran"
    good = _pt2(tmp_path / "good.pt2")

    def sample_inputs(name: str, data: bytes) -> bytes:
        return _pickled(Marker(marker)) if "sample_inputs" in name else data

    def pickled_weight(name: str, data: bytes) -> bytes:
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            for entry in config["config"].values():
                entry["use_pickle"] = True
            return json.dumps(config).encode()
        return _pickled(Marker(marker)) if "/data/weights/weight_" in name else data

    return {"marker": marker, "good": good,
            "sample-inputs": _rewrite(good, tmp_path / "inputs.pt2", sample_inputs),
            "weights": _rewrite(good, tmp_path / "weights.pt2", pickled_weight)}


@pytest.mark.parametrize("attack", ["sample-inputs", "weights"])
def test_a_pt2_that_unpickles_is_refused_even_when_code_is_trusted(attack: str, evil_pt2, tmp_path: Path) -> None:
    res = run_cli(*scan_args(str(evil_pt2[attack]), "sample:digits", tmp_path / "o", "--trust-code"))
    one_line_error(res, "unpickles", "unpickling runs code")
    with pytest.raises(SpecError, match="unpickles"):
        load_model(str(evil_pt2[attack]), trust_code=True)
    assert not evil_pt2["marker"].exists()


def test_a_plain_pt2_is_a_program_that_loads_only_when_trusted(evil_pt2, tmp_path: Path) -> None:
    res = run_cli(*scan_args(str(evil_pt2["good"]), "sample:digits", tmp_path / "o"))
    one_line_error(res, "torch.export program", "--trust-code")
    assert run_cli(*scan_args(str(evil_pt2["good"]), "sample:digits", tmp_path / "o", "--trust-code")).returncode == 0


def test_a_pt2_upload_is_refused_by_default_and_checked_when_allowed(evil_pt2, monkeypatch) -> None:
    at = app("model")
    at.radio(key="model_kind").set_value("Upload a model file")
    at = at.run()
    at.file_uploader[0].upload("model.pt2", evil_pt2["sample-inputs"].read_bytes())
    at = at.run()
    assert_clean(at)
    assert "programs" in texts(at.error) and at.button[0].disabled
    monkeypatch.setenv("PRUNESCOPE_ALLOW_CODE_UPLOADS", "1")
    at = app("model")
    at.radio(key="model_kind").set_value("Upload a model file")
    at = at.run()
    assert "runs code from the file" in texts(at.warning)
    at.file_uploader[0].upload("model.pt2", evil_pt2["sample-inputs"].read_bytes())
    at = at.run()
    at.button[0].click()
    at = at.run()
    assert_clean(at)
    assert "unpickles" in texts(at.error)
    assert not evil_pt2["marker"].exists()


# ----------------------------------------------------------------------------------- TorchScript programs


class ReadsAFile(torch.nn.Module):
    """A TorchScript forward that reads a file of the machine (aten::from_file)."""

    path: str

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        secret = torch.from_file(self.path, shared=False, size=1, dtype=torch.uint8)
        return self.fc(x.flatten(1)) + secret.float().sum() * 0


@pytest.fixture()
def file_reading_script(tmp_path: Path) -> Path:
    (tmp_path / "secret").write_bytes(b"s")
    path = tmp_path / "reads.pt"
    torch.jit.save(torch.jit.script(ReadsAFile(str(tmp_path / "secret"))), str(path))
    return path


def test_a_torchscript_program_runs_only_with_trust_code(file_reading_script: Path, tmp_path: Path) -> None:
    res = run_cli(*scan_args(str(file_reading_script), "sample:digits", tmp_path / "o"))
    one_line_error(res, "TorchScript program", "read and write files", "--trust-code")
    assert not (tmp_path / "o").exists()
    with pytest.raises(SpecError, match="TorchScript program"):
        load_workload(str(file_reading_script), "sample:digits", count=4)


def test_a_torchscript_upload_is_refused_on_a_default_server(file_reading_script: Path) -> None:
    at = app("model")
    at.radio(key="model_kind").set_value("Upload a model file")
    at = at.run()
    at.file_uploader[0].upload("model.pt", file_reading_script.read_bytes())
    at = at.run()
    assert_clean(at)
    assert "TorchScript model, which this box does not take" in texts(at.error)
    assert "--allow-code-uploads" in texts(at.error) and at.button[0].disabled


def test_python_factories_and_pickled_modules_are_code_too(tmp_path: Path) -> None:
    marker = tmp_path / "factory-ran"
    (tmp_path / "net.py").write_text(f"open({str(marker)!r}, 'w')\nimport torch\n"
                                     "def build():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
                                     "torch.nn.Linear(64, 10))\n")
    res = run_cli(*scan_args(f"{tmp_path / 'net.py'}:build", "sample:digits", tmp_path / "o"))
    one_line_error(res, "is Python code", "--trust-code")
    assert not marker.exists()
    torch.save(Marker(marker), tmp_path / "pickled.pt")
    res = run_cli(*scan_args(str(tmp_path / "pickled.pt"), "sample:digits", tmp_path / "o"))
    one_line_error(res, "pickled Python object", "--trust-code")
    assert not marker.exists()
    assert run_cli(*scan_args(f"{tmp_path / 'net.py'}:build", "sample:digits", tmp_path / "o",
                              "--trust-code")).returncode == 0
    assert marker.exists()  # trusted: the user's own code ran


def test_help_says_which_formats_are_code() -> None:
    res = run_cli("scan", "--help")
    assert "--trust-code" in res.stdout and "runs code" in res.stdout
    assert "--allow-code-uploads" in run_cli("dashboard", "--help").stdout


# ------------------------------------------------------------------------------------- the page address


def _evil_image_zip(marker: Path) -> bytes:
    from PIL import Image

    png = io.BytesIO()
    Image.new("L", (8, 8), 128).save(png, format="PNG")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for label in ("0", "1"):
            z.writestr(f"digits/{label}/a.png", png.getvalue())
        z.writestr("digits/0/evil.py", f"open({str(marker)!r}, 'w')\nimport torch\n"
                                       "def build():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
                                       "torch.nn.Linear(64, 10))\n")
        z.writestr("digits/0/evil.py:build", b"")
    return buf.getvalue()


def test_a_link_cannot_run_code_from_an_image_zip(tmp_path: Path, prunescope_home: Path) -> None:
    from ui.uploads import save_image_zip

    marker = tmp_path / "link-ran"
    root = save_image_zip("digits.zip", _evil_image_zip(marker))
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["a.png", "a.png"], "only images are extracted"
    hashed = root.relative_to(prunescope_home / "uploads").parts[0]
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)  # a new session opening the link
    at.query_params["model"] = f"uploaded:{hashed}/images/digits/0/evil.py:build"
    at.query_params["data"] = "sample:digits"
    at.switch_page("pages/1_Model_and_data.py")
    at = at.run()
    assert_clean(at)
    assert not marker.exists()
    assert at.session_state["workload"].model == "sample:digits-cnn"


def test_the_address_takes_only_what_the_pages_write(tmp_path: Path, prunescope_home: Path) -> None:
    from ui.common import address_data, address_model
    from ui.uploads import save_image_zip, save_upload

    state = _pickled(Tiny().state_dict())
    weights = save_upload("w.pth", state, "weights")
    hashed = weights.parent.name
    images = save_image_zip("digits.zip", _evil_image_zip(tmp_path / "m"))
    image_hash = images.relative_to(prunescope_home / "uploads").parts[0]
    assert address_model(f"torchvision:resnet18=uploaded:{hashed}/upload.pt") == f"torchvision:resnet18={weights}"
    assert address_data(f"uploaded:{image_hash}/images/digits", 8) == str(images)
    assert address_data("random:3x8x8", 8) == "random:3x8x8"
    for model in ("torchvision:not_an_arch", "torchvision:resnet18=/etc/passwd", f"uploaded:{hashed}/upload.pt",
                  f"uploaded:{hashed}/../{hashed}/upload.pt", "random:3x8x8", "sample:nope", "model.py:build",
                  f"{weights.parent}/evil.py:build", f"uploaded:{image_hash}/images/digits/0/evil.py:build"):
        assert address_model(model) is None, model
    for data in ("random:3x8x8;rm", "random:../../x", "random:3x99999x99999", f"uploaded:{hashed}/upload.npz",
                 f"uploaded:{image_hash}/images/digits/0", "/etc/passwd", "sample:digits-cnn"):
        assert address_data(data, 8) is None, data


# ---------------------------------------------------------------------------------------- unpacked sizes


def _npz_bomb(path: Path, gib: float = 2.0) -> Path:
    """A small .npz whose array header declares ``gib`` GiB (the body is zeros, deflated)."""
    n = int(gib * (1 << 30)) // 4
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (n // 64, 64)})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            chunk = bytes(1 << 24)
            for _ in range(int(gib * (1 << 30)) // len(chunk)):
                f.write(chunk)
    return path


@pytest.fixture(scope="module")
def npz_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _npz_bomb(tmp_path_factory.mktemp("bomb") / "bomb.npz")


def _scan_peak_kib(data: Path, out: Path) -> tuple[subprocess.CompletedProcess, int]:
    """A CLI scan of ``data`` in a process of its own, and that process's peak memory."""
    peak = out.with_suffix(".peak")
    code = ("import resource, sys; from analysis.cli import main; rc = main(sys.argv[1:]); "
            f"open({str(peak)!r}, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, *scan_args("sample:digits-mlp", str(data), out)],
                         cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    return res, int(peak.read_text())


def test_an_npz_bomb_is_refused_from_its_headers(npz_bomb: Path, tmp_path: Path) -> None:
    assert npz_bomb.stat().st_size < 4 << 20
    res, bomb_peak = _scan_peak_kib(npz_bomb, tmp_path / "bomb")
    one_line_error(res, "bomb")
    np.savez(tmp_path / "small.npz", x=np.zeros((16, 1, 8, 8), dtype=np.float32))
    res, small_peak = _scan_peak_kib(tmp_path / "small.npz", tmp_path / "small")
    assert res.returncode == 0, res.stderr
    assert bomb_peak < small_peak + 256 * 1024, "peak memory (KiB): the 2 GiB array was allocated"
    with pytest.raises(UploadError, match="data.npz: its content unpacks to 2,048 MiB, more than the limit of 1,024 "
                                          r"MiB \(PRUNESCOPE_MAX_UPLOAD_MB\)"):
        with received(npz_bomb.read_bytes(), "data.npz", "data"):
            pass


def test_an_npz_over_the_limit_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "big.npz", x=np.zeros((300, 1, 8, 8), dtype=np.float32))
    res = run_cli(*scan_args("sample:digits-mlp", str(tmp_path / "big.npz"), tmp_path / "o"),
                  PRUNESCOPE_MAX_UNPACKED_MB="0")
    one_line_error(res, "more than the limit", "PRUNESCOPE_MAX_UNPACKED_MB")


def test_a_compressed_torch_save_archive_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"x": torch.zeros(4, 1, 8, 8)}, plain)
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(tmp_path / "packed.pt", "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    res = run_cli(*scan_args("sample:digits-mlp", str(tmp_path / "packed.pt"), tmp_path / "o"))
    one_line_error(res, "torch.save never compresses")


# ------------------------------------------------------------------------------ broken files: one line


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def _zip_with(entries: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


def _patch_headers(data: bytes, offset_in_header: int, value: bytes) -> bytes:
    """Set a field in every local and central header of a zip (method at 8/10, flags at 6/8)."""
    out = bytearray(data)
    for sig, base in ((b"PK\x03\x04", 0), (b"PK\x01\x02", 2)):
        start = 0
        while (i := out.find(sig, start)) >= 0:
            out[i + base + offset_in_header: i + base + offset_in_header + len(value)] = value
            start = i + 4
    return bytes(out)


def _broken_zips() -> dict[str, bytes]:
    png = _png()
    good = [("a/0.png", png), ("b/0.png", png)]
    deflated = _zip_with(good, zipfile.ZIP_DEFLATED)
    body = deflated.find(b"a/0.png") + len("a/0.png")
    corrupt = bytearray(deflated)
    corrupt[body + 4: body + 40] = b"\xff" * 36
    return {
        "file-and-folder": _zip_with([("a/0.png", png), ("a/0.png/1.png", png), ("b/0.png", png)]),
        "long-name": _zip_with([("a/" + "x" * 300 + ".png", png), ("b/0.png", png)]),
        "unknown-method": _patch_headers(_zip_with(good), 8, struct.pack("<H", 99)),
        "corrupt-deflate": bytes(corrupt),
        "encrypted": _patch_headers(_zip_with(good), 6, struct.pack("<H", 1)),
    }


BROKEN = _broken_zips()


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_image_zip_is_one_line(case: str, tmp_path: Path) -> None:
    path = tmp_path / "images.zip"
    path.write_bytes(BROKEN[case])
    one_line_error(run_cli(*scan_args("torchvision:squeezenet1_1", str(path), tmp_path / "o", "--input-size", "32")))
    from ui.uploads import save_image_zip

    with pytest.raises(UploadError):
        save_image_zip("images.zip", BROKEN[case])


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_image_zip_upload_is_a_message(case: str) -> None:
    at = app("model")
    at.radio(key="data_kind").set_value("Upload images (.zip of class folders)")
    at = at.run()
    at.file_uploader[0].upload("images.zip", BROKEN[case])
    at = at.run()
    assert_clean(at)
    assert texts(at.error) and at.button[0].disabled


@pytest.mark.parametrize("layout", ["sparse", "meta"])
def test_a_sparse_or_meta_tensor_file_is_one_line(layout: str, tmp_path: Path) -> None:
    x = torch.zeros(4, 1, 8, 8)
    x = x.to_sparse() if layout == "sparse" else x.to("meta")
    torch.save({"x": x}, tmp_path / "d.pt")
    res = run_cli(*scan_args("sample:digits-mlp", str(tmp_path / "d.pt"), tmp_path / "o"))
    one_line_error(res, "dense tensor")


# ------------------------------------------------------------------------------------------- the store


def test_a_failed_commit_is_not_counted_as_kept(tmp_path: Path, monkeypatch, capsys) -> None:
    import sqlite3

    from analysis.cli import main
    from analysis.store.runs import RunStore

    real, calls = RunStore.add_layer, []

    def full_disk(self, run_id, result, config=None):  # noqa: ANN001, ANN202
        calls.append(result.layer)
        if len(calls) == 4:
            with self._sqlite_errors():
                raise sqlite3.OperationalError("database or disk is full")
        return real(self, run_id, result, config)

    monkeypatch.setattr(RunStore, "add_layer", full_disk)
    code = main(["scan", "--model", "sample:digits-resnet", "--data", "sample:digits", "--sparsities", "0.5",
                 "--quiet", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "disk is full" in err and "the 3 finished layers are kept" in err, err
    with RunStore() as store:
        [run_id] = store.runs()["id"]
        assert len(store.done(int(run_id))) == 3


def test_the_same_scan_started_twice_at_once_shares_one_run(tmp_path: Path, prunescope_home: Path) -> None:
    args = ["scan", "--model", "sample:digits-resnet", "--data", "sample:digits", "--quiet"]
    procs = [subprocess.Popen([sys.executable, "-m", "analysis", *args, "--out", str(tmp_path / f"o{i}")], cwd=ROOT,
                              env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    from analysis.store.runs import RunStore

    with RunStore() as store:
        runs = store.runs()
        assert len(runs) == 1 and runs["status"][0] == "complete" and runs["layers_done"][0] == 7
    a, b = ((tmp_path / f"o{i}" / "sensitivity.csv").read_text() for i in range(2))
    assert a == b


def test_a_lookup_that_raced_joins_the_run_made_meanwhile(workloads) -> None:
    from analysis.sensitivity.config import ScanConfig
    from analysis.sensitivity.context import prepare
    from analysis.store.runs import RunStore

    wl = workloads["digits-mlp"]
    config = ScanConfig(sparsities=(0.5,))
    ctx = prepare(wl, config)
    with RunStore() as store:
        first, second = store.find_scan(wl, config), store.find_scan(wl, config)  # both before any run exists
        a = store.create_scan(wl, ctx, first.key, first.identity, first.seen)
        b = store.create_scan(wl, ctx, second.key, second.identity, second.seen)
        assert a == b and len(store.runs()) == 1
        fresh = store.find_scan(wl, config, fresh=True)
        assert store.create_scan(wl, ctx, fresh.key, fresh.identity, fresh.seen) != a  # --fresh still starts anew


def test_the_readme_states_the_threat_model() -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Safety and data"):]
    for words in ("--trust-code", "--allow-code-uploads", "127.0.0.1", "PRUNESCOPE_MAX_UNPACKED_MB", "programs"):
        assert words in section, words
    assert os.path.exists(ROOT / ".streamlit" / "config.toml")
