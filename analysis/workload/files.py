"""Reading a user's file safely: its kind from its bytes, its unpacked size from its headers, tensors without code."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from analysis.workload.errors import SpecError
from analysis.workload.uploads import UploadError, check_unpacked, sniff


def load_plain(source: object) -> object:
    """``torch.load(weights_only=True)`` on the CPU: tensors and plain containers only, never code. torch's
    warnings about the file (sparse tensors validated, ...) stay out of the user's one-line messages."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(source, map_location="cpu", weights_only=True)


def sniff_kind(path: Path) -> str:
    """What a file holds, read from its bytes (``uploads.sniff``); a damaged zip archive is ``damaged-zip``."""
    try:
        return sniff(path)
    except UploadError:
        return "damaged-zip"


def check_unpacked_file(path: Path, kind: str, what: str) -> None:
    """An archive whose content would unpack past the limit is refused from its headers (``uploads.check_unpacked``)."""
    try:
        check_unpacked(path, kind)
    except UploadError as exc:
        raise SpecError(f"{what} {exc}") from None
