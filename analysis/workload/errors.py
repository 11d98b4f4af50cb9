"""What goes wrong when a user's spec or file is read: ``SpecError``, short one-line texts of exceptions, and the
mark a failed scan leaves on its exception (``KEPT_LAYERS``)."""

from __future__ import annotations

import re

# Set on an exception that ends a scan run into the run store: how many finished layers the store keeps (the faces
# tell the user the scan resumes from them).
KEPT_LAYERS = "prunescope_kept_layers"


class SpecError(ValueError):
    """A model or data spec that cannot be turned into a workload; the message says why and what to do."""


def short_error(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(_ANSI.sub("", str(exc)).split())
    return text if len(text) <= limit else text[:limit] + " ..."


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def torch_load_problem(exc: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` refused, in a few words: torch's own text suggests loading without
    ``weights_only``, which runs code from the file, and is never passed on."""
    text = _ANSI.sub("", str(exc))
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds Python objects other than tensors (found {found.group(1)})"
    if "Weights only load failed" in text or isinstance(exc, KeyError):
        return "it is damaged, or not a torch.save file"
    return short_error(exc)
