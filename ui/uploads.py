"""Uploaded files become files on disk, checked by ``analysis.uploads`` first, so the engine's spec loaders read them.

Uploads are data, never code. ``analysis.uploads.check`` types the bytes by their content (never by the file
name), enforces the size limit (``PRUNESCOPE_MAX_UPLOAD_MB``) and test-extracts archives without trusting their
declared sizes; nothing is unpickled. What passes is kept under ``$PRUNESCOPE_HOME/uploads/<hash>/`` with the
suffix its content deserves, so the spec loaders (pickling off) read it, and a workload spec that names it
stays valid after a restart. Every refusal is an ``UploadError`` (a ``ValueError``) whose message a page shows.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from analysis.store import home
from analysis.uploads import UploadError, check, safe_extract

WHAT = {"onnx": "an ONNX model", "torchscript": "a TorchScript model", "export": "a torch.export program",
        "torch-save": "a torch.save archive (a state dict, or a pickled model)",
        "safetensors": "a safetensors state dict",
        "npz": "a NumPy .npz file", "images-zip": "a zip of images"}

# What each upload box takes, by content, and what to do instead when the content is of another kind.
MODEL_FILE = {"onnx", "torchscript", "export"}
WEIGHTS_FILE = {"torch-save", "safetensors"}
TENSOR_FILE = {"torch-save", "npz"}
IMAGES_FILE = {"images-zip"}
ADVICE = {
    "model": "a state dict goes with a torchvision architecture (upload it there as its weights); a whole model "
             "must be exported as TorchScript, torch.export (.pt2) or ONNX. Uploads are never unpickled: a pickled "
             "nn.Module loads only from the CLI with --trust-pickle",
    "weights": "upload a state dict (torch.save of model.state_dict(), or safetensors); whole models go under "
               "'Upload a model file'",
    "tensors": "upload a .pt (torch.save of a tensor or of a dict with x and y) or a .npz with x and y; a zip of "
               "images goes under 'Upload images'",
    "images": "upload a zip of an image folder: one sub-folder per class",
}


def _folder(content: bytes) -> Path:
    return home() / "uploads" / hashlib.sha256(content).hexdigest()[:16]


def _checked(name: str, content: bytes, role: str, allowed: set[str], advice: str) -> tuple[str, str]:
    kind, suffix = check(content, name, "model" if role in ("model", "weights") else "data")
    if kind not in allowed:
        raise UploadError(f"{name} holds {WHAT.get(kind, kind)}, which this box does not take: {ADVICE[advice]}")
    return kind, suffix


def save_upload(name: str, content: bytes, role: str) -> Path:
    """Check an upload for ``role`` (``model``, ``weights`` or ``tensors``) and keep it; return its path."""
    allowed = {"model": MODEL_FILE, "weights": WEIGHTS_FILE, "tensors": TENSOR_FILE}[role]
    _, suffix = _checked(name, content, role, allowed, role)
    folder = _folder(content)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"upload{suffix}"
    if not path.is_file() or path.stat().st_size != len(content):
        path.write_bytes(content)
    return path


def save_image_zip(name: str, content: bytes) -> Path:
    """Check a zip of an image folder, unpack it safely and return the folder that holds the class folders."""
    _checked(name, content, "data", IMAGES_FILE, "images")
    folder = _folder(content)
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "upload.zip"
    archive.write_bytes(content)
    try:
        return safe_extract(archive, folder / "images")
    finally:
        archive.unlink(missing_ok=True)
