"""An eval set held in memory, and the one way to slice its inputs with their labels."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class EvalData:
    """An eval set held in memory: inputs ``x`` (N, ...) and labels ``y`` (N,) or ``None``."""

    x: torch.Tensor
    y: torch.Tensor | None
    spec: str = ""
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labelled(self) -> bool:
        return self.y is not None

    def span(self, start: int, stop: int) -> "EvalData":
        """Samples ``start:stop``, labels with their inputs: the one way the eval set is sliced."""
        return EvalData(self.x[start:stop], None if self.y is None else self.y[start:stop], self.spec,
                        self.class_names)

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
