"""Uploaded files become files on disk, checked by ``analysis.uploads`` first, so the engine's spec loaders read them.

Uploads are data, never code. ``analysis.uploads.check`` types the bytes by their content (never by the file
name), enforces the size limit (``PRUNESCOPE_MAX_UPLOAD_MB``) and test-extracts archives without trusting their
declared sizes; nothing is unpickled. The model box takes ONNX only: TorchScript and ``.pt2`` files are programs
(running them runs code from the file), taken only by a dashboard started with ``prunescope dashboard
--allow-code-uploads`` (``PRUNESCOPE_ALLOW_CODE_UPLOADS=1``), behind a warning. What passes is kept under
``$PRUNESCOPE_HOME/uploads/<hash>/upload<suffix>`` (the suffix from the content; an image zip's images under
``images/``), so the spec loaders read it, and a workload spec that names it stays valid after a restart. Every
refusal is an ``UploadError`` (a ``ValueError``) whose message a page shows.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from analysis.store.runs import home
from analysis.workload.uploads import (
    CODE_UPLOADS_ENV,
    DEFAULT_MAX_BYTES,
    PROGRAM_KINDS,
    UploadError,
    check,
    extract_hf,
    safe_extract,
    text_suffix,
)
from ui import upload_names

WHAT = {"onnx": "an ONNX model", "torchscript": "a TorchScript model", "export": "a torch.export program",
        "torch-save": "a torch.save archive (a state dict, or a pickled model)",
        "safetensors": "a safetensors state dict",
        "npz": "a NumPy .npz file", "images-zip": "a zip of images", "hf-zip": "a zip of a Hugging Face model folder"}


def code_uploads_allowed() -> bool:
    """Whether this server takes programs (TorchScript, ``.pt2``) as model uploads: only when started so."""
    return os.environ.get(CODE_UPLOADS_ENV, "") == "1"


# What each upload box takes, by content, and what to do instead when the content is of another kind.
MODEL_FILE = {"onnx"}
WEIGHTS_FILE = {"torch-save", "safetensors"}
TENSOR_FILE = {"torch-save", "npz"}
IMAGES_FILE = {"images-zip"}
HF_FILE = {"hf-zip"}
ADVICE = {
    "model": "a state dict goes with a torchvision architecture (upload it there as its weights); a whole model "
             "must be exported to ONNX. Uploads are never unpickled: a pickled nn.Module loads only from the CLI "
             "with --trust-code",
    "program": "TorchScript and torch.export (.pt2) files are programs: running them runs code from the file, so "
               "this dashboard does not take them. Export the model to ONNX, use the CLI with --trust-code, or "
               "start the dashboard with prunescope dashboard --allow-code-uploads",
    "weights": "upload a state dict (torch.save of model.state_dict(), or safetensors); whole models go under "
               "'Upload a model file'",
    "tensors": "upload a .pt (torch.save of a tensor or of a dict with x and y) or a .npz with x and y; a zip of "
               "images goes under 'Upload images'",
    "images": "upload a zip of an image folder: one sub-folder per class",
    "hf": "upload a zip of the folder save_pretrained wrote: config.json, the weights (safetensors) and the "
          "tokenizer files",
}


def _folder(content: bytes) -> Path:
    return home() / "uploads" / hashlib.sha256(content).hexdigest()[:16]


def _checked(name: str, content: bytes, role: str, allowed: set[str], advice: str) -> tuple[str, str]:
    kind, suffix = check(content, name, "model" if role in ("model", "weights") else "data")
    if kind not in allowed:
        why = ADVICE["program" if kind in PROGRAM_KINDS and role == "model" else advice]
        raise UploadError(f"{name} holds {WHAT.get(kind, kind)}, which this box does not take: {why}")
    return kind, suffix


def model_kinds() -> set[str]:
    """What the model box takes on this server."""
    return MODEL_FILE | (PROGRAM_KINDS if code_uploads_allowed() else set())


def save_upload(name: str, content: bytes, role: str) -> Path:
    """Check an upload for ``role`` (``model``, ``weights`` or ``tensors``) and keep it; return its path."""
    allowed = {"model": model_kinds(), "weights": WEIGHTS_FILE, "tensors": TENSOR_FILE}[role]
    _, suffix = _checked(name, content, role, allowed, role)
    folder = _folder(content)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"upload{suffix}"
    if not path.is_file() or path.stat().st_size != len(content):
        path.write_bytes(content)
    upload_names.remember(folder, name)
    return path


def save_image_zip(name: str, content: bytes) -> Path:
    """Check a zip of an image folder, unpack it safely and return the folder that holds the class folders."""
    _checked(name, content, "data", IMAGES_FILE, "images")
    return _unzipped(name, content, "images", safe_extract)


def _unzipped(name: str, content: bytes, into: str, extract: Callable[[Path, Path], Path]) -> Path:
    """Write a checked zip (uploaded as ``name``) to its upload folder, ``extract`` it into ``into`` there, delete the zip; what
    ``extract`` returns."""
    folder = _folder(content)
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "upload.zip"
    archive.write_bytes(content)
    upload_names.remember(folder, name)
    try:
        return extract(archive, folder / into)
    finally:
        archive.unlink(missing_ok=True)


def save_hf_zip(name: str, content: bytes) -> Path:
    """Check a zip of a Hugging Face model folder, extract its configuration, weight and tokenizer files (never
    its code) and return the folder that holds ``config.json``: ``hf:`` names it."""
    _checked(name, content, "model", HF_FILE, "hf")
    return _unzipped(name, content, "hf", extract_hf)


def save_text(name: str, content: bytes) -> Path:
    """Check uploaded text (UTF-8, within the size limit) and keep it under the suffix its content deserves
    (``.jsonl``, ``.csv`` or ``.txt``)."""
    if len(content) > DEFAULT_MAX_BYTES:
        raise UploadError(f"{name} is larger than the upload limit of {DEFAULT_MAX_BYTES >> 20} MiB "
                          "(PRUNESCOPE_MAX_UPLOAD_MB)")
    suffix = text_suffix(content, name)
    folder = _folder(content)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"upload{suffix}"
    if not path.is_file():
        path.write_bytes(content)
    return path
