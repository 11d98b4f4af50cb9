"""One evaluation pass: accuracy, loss, agreement and KL divergence against the dense model.

Every metric is kept as a sum over predictions (``Sums``), so results over shards of the eval set add up
exactly: counts are integers, and loss and KL sums are accumulated in float64 per batch. A prediction is a
sample, or for a causal LM one real position of a sequence (its next token; padding never counts). What each
metric means is ``core.metric_table``'s business:

- ``accuracy``: top-1 against the labels (``None`` when the data has none).
- ``loss``: mean cross-entropy against the labels; without labels, against the dense model's top-1.
- ``perplexity``: exp(loss), causal LMs only.
- ``agreement``: fraction of predictions whose top-1 equals the dense model's (label-free).
- ``kl``: mean KL(dense || pruned) of the softmax outputs (label-free).
- ``logit_cosine``: mean per-prediction cosine similarity of the logits to the dense logits (label-free).
- ``logit_rel_l2``: ||pruned - dense|| / ||dense|| over all logits (label-free).
- ``embedding_cosine``: encoders only, the mean per-sample cosine similarity of the sentence embeddings.

Besides the sums behind these means, every cell keeps the sums its error bars need (``ERROR_SUMS``, read by
``core.intervals``): the paired counts against the dense model on the same samples (``lost``: dense right and
pruned wrong; ``gained``: dense wrong and pruned right; labelled data only), and the sums of squares of the
per-sample loss, loss change (pruned minus dense) and KL. The unit counted in ``n`` (a sample; a causal LM's
next-token position) is the unit of every sum; an encoder's embeddings have none of them (``None``). Rows stored
before these sums existed read them as ``None`` ("not recorded"), and ``None`` plus anything is ``None``: such
cells keep the error bars their counts allow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from analysis.core.data import IGNORE
from analysis.core.metric_table import CAUSAL_LM, CLASSIFICATION, ENCODER, METRICS, applies

_FLAGS = ("labelled", "task")  # fields that describe the sums rather than add up


@dataclass
class Sums:
    """Sums over the predictions of one or more eval shards (all add up exactly; ``labelled`` is and-ed). ``task``
    is the task they were measured for (empty until a shard is added: a classification's rows written before tasks
    existed read as such)."""

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
    task: str = ""

    def __add__(self, other: "Sums") -> "Sums":
        """Field by field: every count and sum adds (``None``, not recorded, stays ``None``); ``labelled`` holds
        when it holds for both; the task is the one both share (an empty start takes the other's)."""
        if self.task and other.task and self.task != other.task:
            raise ValueError(f"cannot add sums of a {self.task} and a {other.task} model")
        added = {f.name: _add(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
                 if f.name not in _FLAGS}
        return Sums(**added, labelled=self.labelled and other.labelled, task=self.task or other.task)

    @classmethod
    def from_dict(cls, d: dict) -> "Sums":
        """The sums in a stored row. Rows written before the logit columns existed lack them (0); rows written before
        the error-bar sums existed lack those (``None``: not recorded)."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known, **{k: None for k in ERROR_SUMS if k not in known})

    def metrics(self) -> dict[str, float | None]:
        """The six classic metrics (``None`` where they do not apply to the task), plus those only the task has
        (perplexity for a causal LM, the embedding cosine for an encoder)."""
        task = self.task or CLASSIFICATION
        n = max(self.n, 1)
        values = {
            "accuracy": self.correct / n if self.labelled else None,
            "loss": self.loss_sum / n,
            "perplexity": _exp(self.loss_sum / n),
            "agreement": self.agree / n,
            "kl": self.kl_sum / n,
            "logit_cosine": self.cos_sum / n,
            "logit_rel_l2": (self.diff_sq_sum / self.ref_sq_sum) ** 0.5 if self.ref_sq_sum > 0 else 0.0,
            "embedding_cosine": self.cos_sum / n,
        }
        return {m: values[m] if applies(m, task) else None for m in METRICS if m in CLASSIC or applies(m, task)}

    def to_dict(self) -> dict:
        return asdict(self)


ERROR_SUMS = ("lost", "gained", "loss_sq_sum", "loss_diff_sum", "loss_diff_sq_sum", "kl_sq_sum")
"""The sums behind the error bars (``core.intervals``); ``None`` in rows stored before they existed and for an
encoder's embeddings (no loss, no classes)."""
CLASSIC = ("accuracy", "loss", "agreement", "kl", "logit_cosine", "logit_rel_l2")  # every profile has these columns


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


def sums_from_logits(logits: torch.Tensor, dense_logits: torch.Tensor, labels: torch.Tensor | None,
                     task: str = CLASSIFICATION) -> Sums:
    """Metric sums for one batch of ``logits`` against the dense model's logits and the labels (if any)."""
    return sums_per_variant(logits.unsqueeze(0), dense_logits, labels, task)[0]


def sums_per_variant(logits: torch.Tensor, dense_logits: torch.Tensor, labels: torch.Tensor | None,
                     task: str = CLASSIFICATION) -> list[Sums]:
    """``sums_from_logits`` for a stack of variants at once: ``logits`` is (variants, batch, ...) against one
    batch of dense outputs. The same sums (the float64 ones summed in another order), in a handful of tensor
    operations instead of a handful per variant."""
    if task == CAUSAL_LM:
        return _next_token_sums(logits, dense_logits, labels)
    if task == ENCODER:
        return _embedding_sums(logits, dense_logits)
    return _class_sums(logits, dense_logits, labels)


def _class_sums(logits: torch.Tensor, dense_logits: torch.Tensor, labels: torch.Tensor | None,
                task: str = CLASSIFICATION, rows: torch.Tensor | None = None) -> list[Sums]:
    """Sums of (variants, predictions, classes) scores against (predictions, classes) dense scores, over the
    predictions ``rows`` (indices; default all of them).

    The work across classes runs on blocks of predictions (``row_blocks``), one after the other: a value per
    prediction does not depend on the block it was computed in, and no temporary is larger than a block's (float64
    copies of a whole batch's scores over a vocabulary would be the largest tensors of a language model's scan)."""
    dense_logits = dense_logits.to(logits.device)
    labels = None if labels is None else labels.to(logits.device)
    count = int(logits.shape[1]) if rows is None else int(rows.numel())
    parts = [_row_values(logits, dense_logits, labels, block)
             for block in row_blocks(count, len(logits) * int(logits.shape[-1]), rows)]
    pred, dense_pred, target, ce, dense_ce, kl_each, cos_rows, diff_rows, ref_rows = (
        torch.cat(column, dim=-1) for column in zip(*(p[:-1] for p in parts)))
    same = torch.stack([p[-1] for p in parts]).all(dim=0)
    change = ce - dense_ce
    right = pred == target
    none = torch.zeros(len(pred), dtype=torch.long)
    correct = right.sum(dim=1) if labels is not None else none
    dense_right = dense_pred == target
    lost = (dense_right & ~right).sum(dim=1) if labels is not None else none
    gained = (~dense_right & right).sum(dim=1) if labels is not None else none
    agree = (pred == dense_pred).sum(dim=1)
    ref_sq = float(ref_rows.sum())
    sums = (correct, agree, ce.sum(dim=1), kl_each.sum(dim=1), cos_rows.sum(dim=1), diff_rows.sum(dim=1), same, lost,
            gained, (ce ** 2).sum(dim=1), change.sum(dim=1), (change ** 2).sum(dim=1), (kl_each ** 2).sum(dim=1))
    columns = (c.tolist() for c in sums)  # one device sync per column
    return [
        Sums(n=count, correct=c, agree=a, loss_sum=lo, kl_sum=k, labelled=labels is not None,
             cos_sum=float(count) if eq else co, diff_sq_sum=0.0 if eq else d, ref_sq_sum=ref_sq, lost=b, gained=g,
             loss_sq_sum=lsq, loss_diff_sum=ds, loss_diff_sq_sum=dsq, kl_sq_sum=ksq, task=task)
        for c, a, lo, k, co, d, eq, b, g, lsq, ds, dsq, ksq in zip(*columns)
    ]


BLOCK_ELEMENTS = 1 << 21  # scores (all variants, float32) of one block of predictions: 8 MB, 16 MB as float64


def row_blocks(count: int, row_elements: int, rows: torch.Tensor | None = None) -> list[slice | torch.Tensor]:
    """The ``count`` predictions cut into blocks of at most ``BLOCK_ELEMENTS`` scores (``row_elements`` a
    prediction, all variants together): slices, or pieces of the index tensor ``rows``; at least one block (an
    empty one when there is nothing to count). A classifier's batch is usually one block."""
    size = max(1, BLOCK_ELEMENTS // max(1, row_elements))
    spans = [(a, min(a + size, count)) for a in range(0, max(count, 1), size)]
    return [slice(a, b) if rows is None else rows[a:b] for a, b in spans]


def _row_values(logits: torch.Tensor, dense_logits: torch.Tensor, labels: torch.Tensor | None,
                block: slice | torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per prediction of one block: top-1 (variants, rows) and the dense top-1, the target, cross-entropies,
    KL, cosine and squared distance to the dense scores (float64), the dense scores' squared norm; last, per
    variant, whether its scores equal the dense ones throughout the block."""
    take = (lambda t, dim: t[(slice(None),) * dim + (block,)]) if isinstance(block, slice) else \
        (lambda t, dim: t.index_select(dim, block))
    scores, dense = take(logits, 1).float(), take(dense_logits, 0).float()
    pred, dense_pred = scores.argmax(dim=-1), dense.argmax(dim=-1)
    target = take(labels, 0) if labels is not None else dense_pred
    log_p = F.log_softmax(scores, dim=-1)
    log_q = F.log_softmax(dense, dim=-1)
    ce = -log_p.gather(-1, target.view(1, -1, 1).expand(len(scores), -1, 1)).squeeze(-1).double()  # (V, R)
    dense_ce = -log_q.gather(-1, target.view(-1, 1)).squeeze(-1).double()  # (R,)
    kl_each = _kl_rows(log_p, log_q)  # (V, R)
    del log_p, log_q
    wide, ref = scores.double(), dense.double()
    cos = F.cosine_similarity(wide, ref.unsqueeze(0), dim=-1)
    diff = ((wide - ref) ** 2).sum(dim=-1)
    same = (scores == dense).flatten(1).all(dim=1)
    return pred, dense_pred, target, ce, dense_ce, kl_each, cos, diff, (ref ** 2).sum(dim=-1), same


WIDE_CLASSES = 4096  # past this many classes (a vocabulary) the per-class terms are summed in float32 first


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(q || p) per prediction, in float64. Over a vocabulary the per-class terms are added in float32 first:
    a float64 copy of (variants, positions, vocabulary) would be the largest tensor of the scan."""
    terms = log_q.exp() * (log_q - log_p)
    return terms.sum(dim=-1).double() if terms.shape[-1] > WIDE_CLASSES else terms.double().sum(dim=-1)


def _next_token_sums(logits: torch.Tensor, dense_logits: torch.Tensor, labels: torch.Tensor | None) -> list[Sums]:
    """Causal LM: (variants, batch, positions, vocabulary) scores, one prediction per position with a real next
    token (``labels`` != ``IGNORE``); padding and the last position of each sequence never count."""
    if labels is None:
        raise ValueError("a causal LM is measured against its next tokens; the data has none")
    flat = logits.flatten(1, -2)  # (variants, positions of all sequences, vocabulary): a view, not a copy
    valid = (labels.flatten() != IGNORE).nonzero().squeeze(1).to(logits.device)
    return _class_sums(flat, dense_logits.flatten(0, -2), labels.flatten(), CAUSAL_LM, rows=valid)


def _embedding_sums(emb: torch.Tensor, dense_emb: torch.Tensor) -> list[Sums]:
    """Encoder: (variants, batch, features) sentence embeddings against the dense ones; only the cosine and
    distance sums mean anything."""
    wide, ref = emb.double(), dense_emb.to(emb.device).double()
    cos = F.cosine_similarity(wide, ref.unsqueeze(0), dim=-1).sum(dim=1)
    diff_sq = ((wide - ref) ** 2).flatten(1).sum(dim=1)
    same = (emb == dense_emb.to(emb.device)).flatten(1).all(dim=1)
    ref_sq, n = float((ref ** 2).sum()), int(emb.shape[1])
    return [Sums(n=n, labelled=False, cos_sum=float(n) if eq else co, diff_sq_sum=0.0 if eq else d,
                 ref_sq_sum=ref_sq, task=ENCODER, **dict.fromkeys(ERROR_SUMS))
            for co, d, eq in zip(cos.tolist(), diff_sq.tolist(), same.tolist())]


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 128,
            device: str | torch.device = "cpu") -> torch.Tensor:
    """The model's logits for ``x``, batched, on the CPU as float32."""
    outs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            out = model(x[start : start + batch_size].to(device))
            outs.append(class_scores(out).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None, dense_logits: torch.Tensor | None,
             batch_size: int = 128, device: str | torch.device = "cpu", task: str = CLASSIFICATION,
             reference: nn.Module | None = None) -> Sums:
    """One pass of ``model`` over ``x``: the metric sums against the dense logits and the labels. Without
    ``dense_logits`` (too large to keep) the dense ones come from ``reference``, batch by batch."""
    total = Sums(labelled=labels is not None)
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            stop = start + batch_size
            xb = x[start:stop].to(device)
            dense = dense_logits[start:stop] if dense_logits is not None else class_scores(reference(xb)).float()
            out = class_scores(model(xb))
            total = total + sums_from_logits(out, dense, None if labels is None else labels[start:stop], task)
    return total


DENSE_CACHE_BYTES = 1 << 30  # the dense outputs are kept in memory up to this size, else recomputed per batch
OUTPUT_BATCH_BYTES = 256 << 20  # the outputs of one batch (a fast-engine chunk: of all its variants) stay below


def batch_for(sample_bytes: int, wanted: int) -> int:
    """The batch size to run: ``wanted``, fewer when a batch's outputs would pass ``OUTPUT_BATCH_BYTES`` (a
    language model's scores over its vocabulary at every position), at least one sample."""
    return max(1, min(wanted, OUTPUT_BATCH_BYTES // max(1, sample_bytes)))


def dense_pass(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None, batch_size: int = 128,
               device: str | torch.device = "cpu", task: str = CLASSIFICATION,
               keep_bytes: int | None = None) -> tuple[torch.Tensor | None, Sums]:
    """One pass of the dense model: its outputs (on the CPU, float32; ``None`` when they would take more than
    ``keep_bytes``, default ``DENSE_CACHE_BYTES``: a language model's next-token scores over a long eval set)
    and its sums against itself (the baseline). Whether they are kept is decided from the first batch's size,
    and kept ones are written into one tensor: outputs too large to keep are never gathered at all."""
    limit = DENSE_CACHE_BYTES if keep_bytes is None else keep_bytes
    kept: torch.Tensor | None = torch.empty(0) if not len(x) else None
    total = Sums(labelled=labels is not None)
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            out = class_scores(model(x[start : start + batch_size].to(device))).float()
            total = total + sums_from_logits(out, out, None if labels is None else labels[start : start + batch_size],
                                             task)
            if start == 0 and out[:1].numel() * 4 * len(x) <= limit:
                with torch.inference_mode(False):  # a normal tensor: later passes may take gradients through it
                    kept = torch.empty((len(x), *out.shape[1:]))
            if kept is not None:
                kept[start : start + len(out)] = out.cpu()
    return kept, total


def task_loss(logits: torch.Tensor, target: torch.Tensor | None, task: str = CLASSIFICATION,
              reduction: str = "sum") -> torch.Tensor:
    """The loss gradient-based passes (the ``taylor`` criterion, fine-tuning) minimise: cross-entropy to the
    labels, or (``target`` None) to the dense model's own top-1 given as ``logits``' argmax; for a causal LM the
    next-token loss over real positions. An encoder's embeddings have no loss: a ``ValueError``."""
    if task == ENCODER:
        raise ValueError("an encoder's sentence embeddings have no loss to take gradients of; use a criterion "
                         "without gradients (magnitude, activation), and no fine-tuning")
    if task == CAUSAL_LM:
        return F.cross_entropy(logits.flatten(0, -2).float(), target.flatten().to(logits.device), ignore_index=IGNORE,
                               reduction=reduction)
    target = target.to(logits.device) if target is not None else logits.detach().argmax(-1)
    return F.cross_entropy(logits, target, reduction=reduction)


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
