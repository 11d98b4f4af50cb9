"""An eval set held in memory, and the one way to slice its inputs with their labels.

Text is held as token ids (N, positions), int64, with ``PAD`` (-1) at the positions a sequence does not fill
(right padding): the attention mask is ``ids != PAD``, so the ids alone say which positions are real and every
slice of the eval set keeps its masks. A causal LM's labels are its next tokens, (N, positions), with
``IGNORE`` (-100) where a position has no real next token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from analysis.core.metric_table import CLASSIFICATION

PAD = -1  # token id of a position a sequence does not fill
IGNORE = -100  # label of a position with nothing to predict (as PyTorch's cross-entropy ignore_index)


@dataclass
class EvalData:
    """An eval set held in memory: inputs ``x`` (N, ...) and labels ``y`` (N,) or ``None``; for a causal LM,
    next-token labels (N, positions). ``task`` says what the model's outputs are (``metric_table.TASKS``)."""

    x: torch.Tensor
    y: torch.Tensor | None
    spec: str = ""
    class_names: list[str] | None = None
    task: str = CLASSIFICATION

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labelled(self) -> bool:
        return self.y is not None

    def span(self, start: int, stop: int) -> "EvalData":
        """Samples ``start:stop``, labels with their inputs: the one way the eval set is sliced."""
        return EvalData(self.x[start:stop], None if self.y is None else self.y[start:stop], self.spec,
                        self.class_names, self.task)

    def head(self, n: int) -> "EvalData":
        """The first ``n`` samples (all of them when there are fewer)."""
        return self.span(0, n)

    def batches(self, size: int) -> "Iterator[EvalData]":
        """The eval set in order, ``size`` samples at a time."""
        for start in range(0, len(self), size):
            yield self.span(start, start + size)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(tensor_bytes(self.x))
        if self.y is not None:
            h.update(tensor_bytes(self.y))
        return h.hexdigest()[:16]


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """A tensor's bytes for hashing, read in place (no copy when the tensor is already contiguous on the CPU)."""
    return memoryview(t.detach().contiguous().cpu().numpy()).cast("B")


def token_mask(x: torch.Tensor) -> torch.Tensor | None:
    """The attention mask of token-id inputs (``True`` at real positions), or ``None`` for other inputs (floats,
    or integers without padding, where every position is real)."""
    if x.is_floating_point() or x.dim() != 2 or not bool((x == PAD).any()):
        return None
    return x != PAD


def real_rows(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rows of an activation that belong to real tokens: ``t`` is (batch, positions, ...) or flattened to
    (batch * positions, ...) as a matmul reads it; any other shape (or no mask) is returned whole."""
    if mask is None:
        return t
    if t.dim() >= 2 and tuple(t.shape[:2]) == tuple(mask.shape):
        return t[mask.to(t.device)]
    if t.dim() >= 1 and t.shape[0] == mask.numel():
        return t[mask.reshape(-1).to(t.device)]
    return t
