"""One evaluation pass: accuracy, loss, agreement and KL divergence against the dense model.

Every metric is kept as a sum over samples (``Sums``), so results over shards of the eval set add up
exactly: counts are integers, and loss and KL sums are accumulated in float64 per batch.

- ``accuracy``: top-1 against the labels (``None`` when the data has none).
- ``loss``: mean cross-entropy against the labels; without labels, against the dense model's top-1.
- ``agreement``: fraction of samples whose top-1 equals the dense model's (label-free).
- ``kl``: mean KL(dense || pruned) of the softmax outputs (label-free).
- ``logit_cosine``: mean per-sample cosine similarity of the logits to the dense logits (label-free).
- ``logit_rel_l2``: ||pruned - dense|| / ||dense|| over all logits (label-free).

Besides the sums behind these means, every cell keeps the sums its error bars need (``ERROR_SUMS``, read by
``core.intervals``): the paired counts against the dense model on the same samples (``lost``: dense right and
pruned wrong; ``gained``: dense wrong and pruned right; labelled data only), and the sums of squares of the
per-sample loss, loss change (pruned minus dense) and KL. A unit counted in ``n`` (a sample) is the unit of every
sum. Rows stored before these sums existed read them as ``None`` ("not recorded"), and ``None`` plus anything is
``None``: such cells keep the error bars their counts allow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Sums:
    """Sums over the samples of one or more eval shards (all add up exactly; ``labelled`` is and-ed)."""

    n: int = 0
    correct: int = 0
    agree: int = 0
    loss_sum: float = 0.0
    kl_sum: float = 0.0
    labelled: bool = True
    cos_sum: float = 0.0
    diff_sq_sum: float = 0.0
    ref_sq_sum: float = 0.0
    lost: int | None = 0
    gained: int | None = 0
    loss_sq_sum: float | None = 0.0
    loss_diff_sum: float | None = 0.0
    loss_diff_sq_sum: float | None = 0.0
    kl_sq_sum: float | None = 0.0

    def __add__(self, other: "Sums") -> "Sums":
        out = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            out[f.name] = (a and b) if f.name == "labelled" else None if a is None or b is None else a + b
        return Sums(**out)

    @classmethod
    def from_dict(cls, d: dict) -> "Sums":
        """The sums in a stored row. Rows written before the logit columns existed lack them (0); rows written before
        the error-bar sums existed lack those (``None``: not recorded)."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known, **{k: None for k in ERROR_SUMS if k not in known})

    def metrics(self) -> dict[str, float | None]:
        n = max(self.n, 1)
        return {
            "accuracy": self.correct / n if self.labelled else None,
            "loss": self.loss_sum / n,
            "agreement": self.agree / n,
            "kl": self.kl_sum / n,
            "logit_cosine": self.cos_sum / n,
            "logit_rel_l2": (self.diff_sq_sum / self.ref_sq_sum) ** 0.5 if self.ref_sq_sum > 0 else 0.0,
        }

    def to_dict(self) -> dict:
        return asdict(self)


ERROR_SUMS = ("lost", "gained", "loss_sq_sum", "loss_diff_sum", "loss_diff_sq_sum", "kl_sq_sum")
"""The sums behind the error bars (``core.intervals``); ``None`` in rows stored before they existed."""


def sums_from_logits(logits: torch.Tensor, dense_logits: torch.Tensor, labels: torch.Tensor | None) -> Sums:
    """Metric sums for one batch of ``logits`` against the dense model's logits and the labels (if any)."""
    return sums_per_variant(logits.unsqueeze(0), dense_logits, labels)[0]


def sums_per_variant(logits: torch.Tensor, dense_logits: torch.Tensor, labels: torch.Tensor | None) -> list[Sums]:
    """``sums_from_logits`` for a stack of variants at once: ``logits`` is (variants, batch, classes) against one
    batch of dense logits. The same sums (the float64 ones summed in another order), in a handful of tensor
    operations instead of a handful per variant."""
    logits = logits.float()
    dense_logits = dense_logits.to(logits.device).float()
    pred = logits.argmax(dim=-1)
    dense_pred = dense_logits.argmax(dim=-1)
    target = labels.to(logits.device) if labels is not None else dense_pred
    log_p = F.log_softmax(logits, dim=-1)
    log_q = F.log_softmax(dense_logits, dim=-1)
    ce = -log_p.gather(-1, target.view(1, -1, 1).expand(len(logits), -1, 1)).squeeze(-1).double()  # (V, B)
    dense_ce = -log_q.gather(-1, target.view(-1, 1)).squeeze(-1).double()  # (B,)
    kl_each = (log_q.exp() * (log_q - log_p)).double().sum(dim=-1)  # (V, B)
    change = ce - dense_ce
    wide, ref = logits.double(), dense_logits.double()
    cos = F.cosine_similarity(wide, ref.unsqueeze(0), dim=-1).sum(dim=1)
    diff_sq = ((wide - ref) ** 2).sum(dim=(1, 2))
    same = (logits == dense_logits).flatten(1).all(dim=1)
    right = pred == target
    none = torch.zeros(len(pred), dtype=torch.long)
    correct = right.sum(dim=1) if labels is not None else none
    dense_right = dense_pred == target
    lost = (dense_right & ~right).sum(dim=1) if labels is not None else none
    gained = (~dense_right & right).sum(dim=1) if labels is not None else none
    agree = (pred == dense_pred).sum(dim=1)
    ref_sq = float((ref ** 2).sum())
    n = int(logits.shape[1])
    sums = (correct, agree, ce.sum(dim=1), kl_each.sum(dim=1), cos, diff_sq, same, lost, gained, (ce ** 2).sum(dim=1),
            change.sum(dim=1), (change ** 2).sum(dim=1), (kl_each ** 2).sum(dim=1))
    columns = (c.tolist() for c in sums)  # one device sync per column
    return [
        Sums(n=n, correct=c, agree=a, loss_sum=lo, kl_sum=k, labelled=labels is not None,
             cos_sum=float(n) if eq else co, diff_sq_sum=0.0 if eq else d, ref_sq_sum=ref_sq, lost=b, gained=g,
             loss_sq_sum=lsq, loss_diff_sum=ds, loss_diff_sq_sum=dsq, kl_sq_sum=ksq)
        for c, a, lo, k, co, d, eq, b, g, lsq, ds, dsq, ksq in zip(*columns)
    ]


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 128,
            device: str | torch.device = "cpu") -> torch.Tensor:
    """The model's logits for ``x``, batched, on the CPU as float32."""
    outs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            out = model(x[start : start + batch_size].to(device))
            outs.append(class_scores(out).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None, dense_logits: torch.Tensor,
             batch_size: int = 128, device: str | torch.device = "cpu") -> Sums:
    """One pass of ``model`` over ``x``: the metric sums against the dense logits and the labels."""
    total = Sums(labelled=labels is not None)
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            stop = start + batch_size
            out = class_scores(model(x[start:stop].to(device)))
            total = total + sums_from_logits(out, dense_logits[start:stop],
                                             None if labels is None else labels[start:stop])
    return total


def as_class_scores(t: torch.Tensor) -> torch.Tensor:
    """(N, C) class scores. A binary classifier's single logit ``z`` (shape (N,) or (N, 1)) becomes ``(0, z)``:
    its softmax is ``(1 - sigmoid(z), sigmoid(z))``, so accuracy, agreement, cross-entropy and KL are the binary
    ones (a single column would always agree with itself)."""
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() == 2 and t.shape[1] == 1:
        return torch.cat([torch.zeros_like(t), t], dim=1)
    return t


def class_scores(out: object) -> torch.Tensor:
    return as_class_scores(_output_tensor(out))


def _output_tensor(out: object) -> torch.Tensor:
    """Models may return a tensor, a tuple (take the first), a dict or an object with ``logits`` (torchvision's
    GoogLeNet/Inception outputs in training mode, Hugging Face style outputs), or a dict whose only tensor it is."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, dict):
        tensors = [v for v in out.values() if isinstance(v, torch.Tensor)]
        if isinstance(out.get("logits"), torch.Tensor):
            return out["logits"]
        if len(tensors) == 1:
            return tensors[0]
        raise TypeError(f"the model returned a dict of {', '.join(map(str, out))}; expected a tensor of class "
                        "scores (or a dict with 'logits')")
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the model returned {type(out).__name__}; expected a tensor of class scores")
