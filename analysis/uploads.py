"""Files that arrive as bytes (dashboard uploads): typed by content, size-limited, never unpickled, cleaned up.

``received(data, filename, role)`` checks what the bytes are by reading them (magic numbers, zip listings),
never by trusting the name, writes them to a private temporary folder under the suffix their content
deserves, and deletes the folder when the ``with`` block ends. A zip archive of an image folder is extracted
safely (no absolute paths, no ``..``, no links, limits on the total size and the number of files).

Nothing here unpickles anything. A plain pickle stream is refused outright; a ``torch.save`` archive is
accepted as a state dict or tensor file, which Prunescope only ever reads with ``torch.load(weights_only=True)``
(a pickled ``nn.Module`` then fails to load: it needs ``--trust-pickle``, which uploads never get).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MiB = 1 << 20
DEFAULT_MAX_BYTES = int(os.environ.get("PRUNESCOPE_MAX_UPLOAD_MB", "1024")) * MiB
MAX_ARCHIVE_FILES = 200_000
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MODEL_KINDS = {"onnx": ".onnx", "torchscript": ".pt", "export": ".pt2", "torch-save": ".pt", "safetensors":
               ".safetensors"}
DATA_KINDS = {"torch-save": ".pt", "npz": ".npz", "images-zip": ""}


class UploadError(ValueError):
    """Bytes that are refused: too large, of the wrong kind, or an unsafe archive."""


@dataclass(frozen=True)
class Upload:
    """A received file: where it lies now (a file, or a folder for an image archive) and what it holds."""

    path: Path
    kind: str
    size: int
    name: str


KIND_WORDS = {"onnx": "an ONNX model", "torchscript": "a TorchScript model", "export": "a torch.export program",
              "safetensors": "a safetensors file", "npz": "a numpy .npz archive", "images-zip": "a zip of images",
              "damaged-zip": "a damaged zip archive", "torch-save": "a torch.save file", "pickle": "a pickle stream"}


def kind_words(kind: str) -> str:
    """A ``sniff`` kind in words, for messages."""
    return KIND_WORDS.get(kind, "text or an unknown format")


def _zip_names(data_path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(data_path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        raise UploadError("the file looks like a zip archive (a TorchScript, .pt2, torch.save or image archive) but "
                          "is damaged or truncated: upload it again, whole") from None


def zip_kind(names: list[str]) -> str:
    """What a zip archive holds, from its member names: torchscript, export (``torch.export``), torch-save
    (``torch.save``), npz, images-zip or unknown. The one place these rules live (``sources`` reads models
    with them too)."""
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if any("serialized_exported_program" in n or n.endswith("archive_format") for n in names):
        return "export"
    if any(n.endswith("data.pkl") for n in names):
        return "torch-save"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    if any(PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES for n in names):
        return "images-zip"
    return "unknown"


def sniff(path: Path) -> str:
    """What a file holds, from its bytes: onnx, torchscript, export, torch-save, safetensors, npz, images-zip,
    pickle or unknown."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:2] == b"PK":
        return zip_kind(_zip_names(path))
    if head[:1] == b"\x80" or head[:2] in (b"(d", b"(l", b"}q", b"]q"):
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (100 * MiB):
        return "safetensors"
    if head[:1] == b"\x08" and _parses_as_onnx(path):
        return "onnx"
    return "unknown"


def _parses_as_onnx(path: Path) -> bool:
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - anything that does not parse is not ONNX
        return False
    return True


def safe_extract(archive: Path, dest: Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_files: int = MAX_ARCHIVE_FILES) -> Path:
    """Extract a zip archive into ``dest``, refusing escaping paths, links, and archives over the limits.

    Sizes are counted as bytes are written, not read from the archive's own (forgeable) headers. Returns the
    image folder root: ``dest``, or its single top-level folder when the archive wraps everything in one.
    """
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    written = 0
    try:
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.infolist() if not m.is_dir()]
            if len(members) > max_files:
                raise UploadError(f"the archive holds {len(members)} files; the limit is {max_files}")
            for m in members:
                name = m.filename.replace("\\", "/")
                parts = PurePosixPath(name).parts
                if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
                    raise UploadError(f"the archive entry {m.filename!r} points outside the archive")
                if stat.S_ISLNK(m.external_attr >> 16):
                    raise UploadError(f"the archive entry {m.filename!r} is a link; links are not extracted")
                if parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
                    continue
                target = (dest / Path(*parts)).resolve()
                if dest not in target.parents:
                    raise UploadError(f"the archive entry {m.filename!r} points outside the archive")
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(m) as src, open(target, "wb") as out:
                    while chunk := src.read(MiB):
                        written += len(chunk)
                        if written > max_bytes:
                            raise UploadError(f"the archive unpacks to more than {max_bytes // MiB} MiB, the limit")
                        out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise UploadError(f"the archive is damaged or truncated: {exc}") from None
    entries = [p for p in dest.iterdir()]
    if len(entries) == 1 and entries[0].is_dir():
        inner = entries[0]
        if any(p.is_dir() for p in inner.iterdir()):
            return inner
    return dest


def _display_name(filename: str) -> str:
    base = PurePosixPath(str(filename).replace("\\", "/")).name
    return re.sub(r"[^\w.\- ]", "_", base)[:120] or "upload"


@contextmanager
def received(data: bytes, filename: str, role: str, max_bytes: int | None = None) -> Iterator[Upload]:
    """Check and hold uploaded bytes for the length of the block; ``role`` is ``model`` or ``data``.

    The file (or the extracted image folder) lives in a private temporary folder that is removed afterwards,
    also when the block raises.
    """
    if role not in ("model", "data"):
        raise ValueError(f"role must be 'model' or 'data', got {role!r}")
    limit = DEFAULT_MAX_BYTES if max_bytes is None else int(max_bytes)
    name = _display_name(filename)
    if len(data) == 0:
        raise UploadError(f"{name} is empty")
    if len(data) > limit:
        raise UploadError(f"{name} is {len(data) / MiB:.1f} MiB; the upload limit is {limit / MiB:.0f} MiB "
                          "(PRUNESCOPE_MAX_UPLOAD_MB)")
    folder = Path(tempfile.mkdtemp(prefix="prunescope-upload-"))
    try:
        raw = folder / "upload.bin"
        raw.write_bytes(data)
        try:
            kind = sniff(raw)
        except UploadError as exc:
            raise UploadError(f"{name}: {exc}") from None
        allowed = MODEL_KINDS if role == "model" else DATA_KINDS
        if kind == "pickle":
            instead = ("Export the model as ONNX, TorchScript, torch.export (.pt2) or safetensors" if role == "model"
                       else "Save the tensors with torch.save({'x': x, 'y': y}, path) or numpy.savez")
            raise UploadError(f"{name} is a pickle stream; unpickling runs code, so uploads never accept it. "
                              + instead)
        if kind not in allowed:
            what = "a model (ONNX, TorchScript, .pt2, safetensors or a state dict)" if role == "model" else \
                "data (a .pt/.npz tensor file or a .zip of an image folder)"
            raise UploadError(f"{name} is not {what}; its content reads as {kind_words(kind)}")
        if kind == "images-zip":
            path = safe_extract(raw, folder / "images", max_bytes=limit)
            raw.unlink()
        else:
            path = raw.rename(folder / f"upload{allowed[kind]}")
        yield Upload(path, kind, len(data), name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check(data: bytes, filename: str, role: str, max_bytes: int | None = None) -> tuple[str, str]:
    """``(kind, suffix)`` of uploaded bytes after every check of ``received`` (archives are test-extracted), for
    callers that keep the file themselves: save it under ``suffix``, which comes from the content, not the name."""
    with received(data, filename, role, max_bytes) as up:
        return up.kind, (MODEL_KINDS if role == "model" else DATA_KINDS)[up.kind]
