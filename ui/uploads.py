"""Uploaded files become files on disk, named by their content, so the engine's spec loaders read them.

Uploads are data, never code: a model upload is read by ``analysis.sources`` with pickling off (TorchScript,
``torch.export``, ONNX, state dicts with ``weights_only=True``), and a zip of images is unpacked member by
member with every path checked to stay inside its folder.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

from analysis.sources import SpecError

MAX_ZIP_MEMBERS = 100_000
MAX_ZIP_BYTES = 2 * 1024**3


def prunescope_home() -> Path:
    """Where results and uploads live: ``$PRUNESCOPE_HOME`` or ``~/.prunescope``."""
    return Path(os.environ.get("PRUNESCOPE_HOME") or Path.home() / ".prunescope")


def save_upload(name: str, content: bytes) -> Path:
    """Write an upload under ``$PRUNESCOPE_HOME/uploads/<hash>/`` keeping only its file name's suffix."""
    if not content:
        raise SpecError(f"the uploaded file {name} is empty")
    digest = hashlib.sha256(content).hexdigest()[:16]
    suffix = "".join(Path(name).suffixes[-1:]).lower()
    if not suffix.replace(".", "").isalnum():
        suffix = ""
    folder = prunescope_home() / "uploads" / digest
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"upload{suffix}"
    if not path.is_file() or path.stat().st_size != len(content):
        path.write_bytes(content)
    return path


def extract_image_zip(path: Path) -> Path:
    """Unpack a zip of an ImageFolder tree next to it and return the folder that holds the class folders."""
    target = path.parent / "images"
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise SpecError(f"{path.name} is not a zip archive (zip a folder with one sub-folder per class)") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > MAX_ZIP_MEMBERS:
            raise SpecError(f"the zip holds {len(members)} files; the limit is {MAX_ZIP_MEMBERS}")
        if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
            raise SpecError(f"the zip unpacks to more than {MAX_ZIP_BYTES // 1024**3} GiB")
        root = target.resolve()
        for m in members:
            dest = (target / m.filename).resolve()
            if root not in dest.parents:
                raise SpecError(f"the zip member {m.filename!r} points outside the archive's folder")
            if m.external_attr >> 16 & 0o170000 == 0o120000:
                raise SpecError(f"the zip member {m.filename!r} is a symbolic link")
        if not target.is_dir():
            for m in members:
                dest = target / m.filename
                dest.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(m) as src, open(dest, "wb") as out:
                    out.write(src.read())
    return _class_root(target)


def _class_root(folder: Path) -> Path:
    """The folder whose sub-folders are the classes: skip single wrapping folders (``data/train/...``)."""
    while True:
        children = [c for c in folder.iterdir() if not c.name.startswith((".", "__MACOSX"))]
        if len(children) == 1 and children[0].is_dir() and any(g.is_dir() for g in children[0].iterdir()):
            folder = children[0]
            continue
        return folder
