"""Tell a failure of the user's model apart from a failure of Prunescope.

A model runs code Prunescope does not own: the Python of a ``model.py:factory`` file, a TorchScript program, an
ONNX graph in ONNX Runtime. When it raises on a batch (one that the two-sample fit check did not show), the user
needs one line naming the model and the exception, not a traceback through the engine; Prunescope's own errors
must keep their traceback. ``model_failure`` decides by where the exception was raised: the innermost frame of
its traceback that lies in the user's model file or in Prunescope's package (a forward hook of ours that fails
inside the user's forward is ours), a TorchScript module's call, or ONNX Runtime.
"""

from __future__ import annotations

import re
import traceback
import types
from pathlib import Path

_USER_FILES: set[str] = set()
_PACKAGE = str(Path(__file__).resolve().parent)


def register(module: types.ModuleType) -> None:
    """Remember the file of a module imported from the user's ``model.py``: frames in it are the model's."""
    file = getattr(module, "__file__", None)
    if file:
        _USER_FILES.update({file, str(Path(file).resolve())})


def _where(frame: types.FrameType, line: int) -> str | None:
    """``file, line N, in NAME`` for a frame of the user's code; ``""`` for a frame of a TorchScript module's call;
    ``None`` for a frame of Prunescope; raises ``LookupError`` for any other frame (torch, the standard library)."""
    file = frame.f_code.co_filename
    if file in _USER_FILES:
        return f"{Path(file).name}, line {line}, in {frame.f_code.co_name}"
    if file.startswith(_PACKAGE):
        return None
    import torch

    if isinstance(frame.f_locals.get("self"), torch.jit.ScriptModule):
        return ""
    raise LookupError(file)


def model_failure(exc: BaseException, model: str = "the model") -> str | None:
    """One line saying that ``model`` raised ``exc`` (and where, in the user's file), or ``None`` when the
    exception came from Prunescope or the libraries it calls itself."""
    if not isinstance(exc, Exception):
        return None
    frames = list(traceback.walk_tb(exc.__traceback__))
    where: str | None = None
    if type(exc).__module__.startswith("onnxruntime"):
        if frames and frames[-1][0].f_code.co_filename == str(Path(_PACKAGE, "onnx_model.py")):
            where = "in ONNX Runtime"
    else:
        for frame, line in reversed(frames):
            try:
                where = _where(frame, line)
            except LookupError:
                continue
            break
    if where is None:
        return None
    lines = [part.strip() for part in str(exc).splitlines() if part.strip()]
    text = lines[-1].removeprefix("builtins.") if lines else ""
    if len(text) > 300:
        text = text[:300] + " ..."
    if not re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b", text):
        text = f"{type(exc).__name__}: {text}"
    place = f" ({where})" if where else ""
    return f"{model} failed on a batch of the data{place}: {text}"
