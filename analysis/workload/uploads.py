"""Files that arrive as bytes (dashboard uploads): typed by content, size-limited, never unpickled, cleaned up.

``received(data, filename, role)`` checks what the bytes are by reading them (magic numbers, zip listings),
never by trusting the name, writes them to a private temporary folder under the suffix their content
deserves, and deletes the folder when the ``with`` block ends. A zip archive of an image folder is extracted
safely (no absolute paths, no ``..``, no links, limits on the total size and the number of files); a zip of a
Hugging Face model folder likewise, and of it only the configuration, weight and tokenizer files (never code).
Text (``text_suffix``) is taken as UTF-8 without NUL bytes, its suffix (``.jsonl``, ``.csv``, ``.txt``) read
from its content.

Nothing here unpickles anything. A plain pickle stream is refused outright; a ``torch.save`` archive is
accepted as a state dict or tensor file, which Prunescope only ever reads with ``torch.load(weights_only=True)``
(a pickled ``nn.Module`` then fails to load: it needs ``--trust-code``, which uploads never get). npz and
``torch.save`` archives are checked from their headers (``check_unpacked``) before any array is read.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MiB = 1 << 20
DEFAULT_MAX_BYTES = int(os.environ.get("PRUNESCOPE_MAX_UPLOAD_MB", "1024")) * MiB
MAX_UNPACKED_BYTES = int(os.environ.get("PRUNESCOPE_MAX_UNPACKED_MB", "4096")) * MiB
MAX_RATIO, RATIO_FLOOR = 100, 64 * MiB  # bigger than RATIO_FLOOR and MAX_RATIO times the packed size: a bomb
MAX_ARCHIVE_FILES = 200_000
MAX_NAME_CHARS = 255
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MODEL_KINDS = {"onnx": ".onnx", "torchscript": ".pt", "export": ".pt2", "torch-save": ".pt", "safetensors":
               ".safetensors", "hf-zip": ""}
PROGRAM_KINDS = {"torchscript", "export"}  # model files that are programs: loading them runs code from the file
CODE_UPLOADS_ENV = "PRUNESCOPE_ALLOW_CODE_UPLOADS"  # "1": the dashboard takes PROGRAM_KINDS uploads (opt-in)
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
              "hf-zip": "a zip of a Hugging Face model folder",
              "damaged-zip": "a damaged zip archive", "torch-save": "a torch.save file", "pickle": "a pickle stream",
              "damaged-onnx": "a truncated or corrupt ONNX file"}


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
    if is_hf_folder(names):
        return "hf-zip"
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


# The files of a Hugging Face model folder Prunescope reads: configuration, weights, tokenizer. Nothing else of an
# uploaded folder is extracted (its .py files least of all).
HF_FILE = re.compile(r"^(?:(?:config|generation_config|tokenizer|tokenizer_config|special_tokens_map|added_tokens)"
                     r"\.json|vocab\.(?:txt|json)|merges\.txt|(?:model|pytorch_model)(?:-\d{5}-of-\d{5})?"
                     r"\.(?:safetensors|bin)|(?:model\.safetensors|pytorch_model\.bin)\.index\.json)$")
HF_WEIGHTS = re.compile(r"^(?:model|pytorch_model)(?:-\d{5}-of-\d{5})?\.(?:safetensors|bin)$")


def is_hf_folder(names: list[str]) -> bool:
    """Whether a zip listing is a Hugging Face model folder: ``config.json`` and weights side by side."""
    folders: dict[str, set[str]] = {}
    for n in names:
        path = PurePosixPath(n)
        folders.setdefault(str(path.parent), set()).add(path.name)
    return any("config.json" in files and any(HF_WEIGHTS.match(f) for f in files) for files in folders.values())


def _is_image(path: PurePosixPath) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _is_hf_file(path: PurePosixPath) -> bool:
    return bool(HF_FILE.match(path.name))


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
    if head[:1] == b"\x08":  # an ONNX ModelProto opens with its ir_version field
        return "onnx" if _parses_as_onnx(path) else "damaged-onnx"
    return "unknown"


def _parses_as_onnx(path: Path) -> bool:
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - anything that does not parse is not ONNX
        return False
    return True


def safe_extract(archive: Path, dest: Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_files: int = MAX_ARCHIVE_FILES, wanted: Callable[[PurePosixPath], bool] = _is_image) -> Path:
    """Extract the image files (or the files ``wanted`` takes) of a zip archive into ``dest``, refusing escaping
    paths, links, and archives over the limits; every other entry (code, text, hidden files) stays in the archive.

    Sizes are counted as bytes are written, not read from the archive's own (forgeable) headers. Any entry that
    cannot be extracted (encrypted, an unknown compression, a damaged stream, a name too long or both a file
    and a folder) is one ``UploadError``. Returns the image folder root (``image_root(dest)``).
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
                target = _member_target(m, dest, wanted)
                if target is not None:
                    written = _extract_member(z, m, target, written, max_bytes)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
        raise UploadError(f"the archive is damaged or truncated: {_one_line(exc)}") from None
    return image_root(dest)


def _member_target(m: zipfile.ZipInfo, dest: Path, wanted: Callable[[PurePosixPath], bool]) -> Path | None:
    """Where an archive entry goes under ``dest``; ``None`` for entries that are not extracted (not ``wanted``,
    hidden, macOS metadata); ``UploadError`` for entries that point outside or are links."""
    name = m.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    shown = _shown(m.filename)
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise UploadError(f"the archive entry {shown} points outside the archive")
    if stat.S_ISLNK(m.external_attr >> 16):
        raise UploadError(f"the archive entry {shown} is a link; links are not extracted")
    if parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
        return None
    if not wanted(PurePosixPath(name)):
        return None
    if any(len(p.encode()) > MAX_NAME_CHARS for p in parts):
        raise UploadError(f"the archive entry {shown} has a name longer than {MAX_NAME_CHARS} bytes")
    target = (dest / Path(*parts)).resolve()
    if dest not in target.parents:
        raise UploadError(f"the archive entry {shown} points outside the archive")
    return target


def _extract_member(z: zipfile.ZipFile, m: zipfile.ZipInfo, target: Path, written: int, max_bytes: int) -> int:
    """Write one entry, counting bytes as they come; returns the archive's running total."""
    shown = _shown(m.filename)
    if m.flag_bits & 0x1:
        raise UploadError(f"the archive entry {shown} is encrypted; upload an archive without a password")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with z.open(m) as src, open(target, "wb") as out:
            while chunk := src.read(MiB):
                written += len(chunk)
                if written > max_bytes:
                    raise UploadError(f"the archive unpacks to more than {max_bytes // MiB} MiB, the limit")
                out.write(chunk)
    except NotImplementedError:
        raise UploadError(f"the archive entry {shown} uses a compression method Prunescope cannot read; "
                          "zip it again with the usual (deflate) compression") from None
    except (RuntimeError, OSError) as exc:
        raise UploadError(f"the archive entry {shown} cannot be extracted: {_one_line(exc)}") from None
    return written


def _shown(name: str) -> str:
    return repr(name if len(name) <= 80 else name[:77] + "...")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + " ..."


def image_root(dest: Path) -> Path:
    """The folder of an extracted image archive that holds the class folders: ``dest``, or its single top-level
    folder when the archive wraps everything in one."""
    entries = list(dest.iterdir()) if dest.is_dir() else []
    if len(entries) == 1 and entries[0].is_dir() and any(p.is_dir() for p in entries[0].iterdir()):
        return entries[0]
    return dest


def extract_hf(archive: Path, dest: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """Extract a zip of a Hugging Face model folder (``safe_extract``, its configuration, weight and tokenizer
    files only) and return the folder that holds ``config.json``. A ``.bin`` weight file must be a ``torch.save``
    archive within the limits (never a bare pickle): it is read with ``weights_only``, never unpickled."""
    safe_extract(archive, dest, max_bytes, wanted=_is_hf_file)
    configs = sorted(dest.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise UploadError("the archive holds no config.json: zip the folder save_pretrained wrote")
    root = configs[0].parent
    for weights in root.glob("*.bin"):
        kind = sniff(weights)
        if kind != "torch-save":
            raise UploadError(f"{weights.name} is {kind_words(kind)}, not a torch.save archive; save the model with "
                              "save_pretrained (safetensors)")
        check_unpacked(weights, kind, max_bytes, shown=weights.name, setting="PRUNESCOPE_MAX_UPLOAD_MB")
    return root


TEXT_SUFFIXES = (".jsonl", ".csv", ".txt")


def text_suffix(data: bytes, name: str = "the upload") -> str:
    """The suffix text deserves from its content: ``.jsonl`` when every non-empty line is a JSON object,
    ``.csv`` when its first line is a header with a ``text`` column, else ``.txt``. Bytes that are not UTF-8
    text without NUL bytes are an ``UploadError``."""
    import csv
    import io
    import json

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UploadError(f"{name} is not UTF-8 text") from None
    if "\x00" in text or not text.strip():
        raise UploadError(f"{name} is {'empty' if not text.strip() else 'binary, not text'}")
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        if all(isinstance(json.loads(line), dict) for line in lines):
            return ".jsonl"
    except json.JSONDecodeError:
        pass
    header = next(csv.reader(io.StringIO(lines[0])), [])
    return ".csv" if "text" in [h.strip() for h in header] and len(header) > 1 else ".txt"


# ------------------------------------------------------------------------------------ unpacked-size limits


def check_unpacked(path: Path, kind: str, max_bytes: int = MAX_UNPACKED_BYTES, shown: str | None = None,
                   setting: str = "PRUNESCOPE_MAX_UNPACKED_MB") -> None:
    """Refuse an ``npz`` or ``torch-save`` archive whose content would unpack past ``max_bytes``, or like a
    bomb (over ``MAX_RATIO`` times its packed size, beyond ``RATIO_FLOOR``), from its headers alone: before any
    array is read. An npz array takes the memory its ``.npy`` header declares; a ``torch.save`` archive is read
    only when every entry is stored uncompressed (as ``torch.save`` writes it), so it takes no more than the
    file's size. Messages name the file ``shown`` (default: its path) and the ``setting`` that sets the limit."""
    try:
        if kind == "npz":
            total, packed = _npz_sizes(path)
        elif kind == "torch-save":
            total, packed = _stored_sizes(path)
        else:
            return
        _check_size(total, packed, max_bytes, setting)
    except UploadError as exc:
        raise UploadError(f"{shown or path}: {exc}") from None


def _npz_sizes(path: Path) -> tuple[int, int]:
    """``(bytes the arrays take, bytes packed)`` from each member's ``.npy`` header."""
    import numpy as np

    total, packed = 0, 0
    try:
        with zipfile.ZipFile(path) as z:
            for m in z.infolist():
                if m.flag_bits & 0x1:
                    raise UploadError(f"the array {m.filename!r} is encrypted")
                with z.open(m) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                total += math.prod(shape) * dtype.itemsize
                packed += m.compress_size
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError, ValueError,
            OSError) as exc:
        raise UploadError(f"not a readable .npz archive ({_one_line(exc)})") from None
    return total, packed


def _stored_sizes(path: Path) -> tuple[int, int]:
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UploadError(f"a damaged archive ({_one_line(exc)})") from None
    packed = [m for m in members if m.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise UploadError(f"it holds compressed entries ({packed[0].filename!r}); torch.save never compresses, so "
                          "it was not written by torch.save: save it again with torch.save")
    return sum(m.file_size for m in members), sum(m.compress_size for m in members)


def _check_size(total: int, packed: int, max_bytes: int, setting: str) -> None:
    if total > max_bytes:
        raise UploadError(f"its content unpacks to {total / MiB:,.0f} MiB, more than the limit of "
                          f"{max_bytes / MiB:,.0f} MiB ({setting})")
    if total > RATIO_FLOOR and total > MAX_RATIO * max(packed, 1):
        raise UploadError(f"its content unpacks to {total / MiB:,.0f} MiB from {packed / MiB:,.1f} MiB (over "
                          f"{MAX_RATIO} times its packed size, like a zip bomb); it is not read")


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
            instead = ("Export the model to ONNX, or save its state dict (torch.save or safetensors)" if role == "model"
                       else "Save the tensors with torch.save({'x': x, 'y': y}, path) or numpy.savez")
            raise UploadError(f"{name} is a pickle stream; unpickling runs code, so uploads never accept it. "
                              + instead)
        if kind not in allowed:
            what = ("not a model file (ONNX, TorchScript, .pt2, a zip of a Hugging Face folder) nor a state dict "
                    "(torch.save, safetensors)" if role == "model"
                    else "not data (a .pt/.npz tensor file or a .zip of an image folder)")
            raise UploadError(f"{name} is {what}; its content reads as {kind_words(kind)}")
        if kind in ("npz", "torch-save"):
            check_unpacked(raw, kind, limit, shown=name, setting="PRUNESCOPE_MAX_UPLOAD_MB")
        if kind == "images-zip":
            path = safe_extract(raw, folder / "images", max_bytes=limit)
            raw.unlink()
        elif kind == "hf-zip":
            path = extract_hf(raw, folder / "hf", max_bytes=limit)
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
