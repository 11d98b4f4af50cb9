"""Sparse fine-tuning: train a pruned model for a few steps with its masks fixed, to see how much comes back.

The pruned weights stay exactly zero throughout: their gradients are masked before every step (so momentum
never builds up on them) and the weights are masked again after it. Everything else trains, BatchNorm
included (in training mode, so its running statistics follow the pruned network).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from analysis.core.masks import bake
from analysis.core.metric_table import CLASSIFICATION, ENCODER
from analysis.core.metrics import class_scores, task_loss


@dataclass
class FinetuneProgress:
    """One finished step: its number, the total, and the step's training loss."""

    step: int
    steps: int
    loss: float


def finetune(model: nn.Module, masks: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor | None,
             steps: int, *, lr: float = 0.01, batch_size: int = 64, momentum: float = 0.9,
             weight_decay: float = 0.0, soft_targets: torch.Tensor | None = None, seed: int = 0,
             device: str | torch.device = "cpu",
             progress: Callable[[FinetuneProgress], None] | None = None, task: str = CLASSIFICATION) -> list[float]:
    """Train ``model`` in place for ``steps`` SGD steps on ``(x, y)`` with ``masks`` fixed; returns the losses.

    Without labels, ``soft_targets`` (the dense model's logits on ``x``) are the teacher: the loss is the KL
    divergence to them. A causal LM learns its next tokens (``task``). The model is left in eval mode.
    """
    if task == ENCODER:
        task_loss(torch.empty(0), None, task)  # an encoder has no loss: its ValueError says so
    if steps < 0:
        raise ValueError(f"fine-tuning steps must be zero or more, got {steps}")
    if batch_size <= 0:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    if not lr > 0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    if y is None and soft_targets is None:
        raise ValueError("fine-tuning needs labels or the dense model's outputs (soft_targets) to learn from")
    if len(x) == 0:
        raise ValueError("fine-tuning needs training samples; the training data is empty")
    if steps == 0:
        return []
    device = torch.device(device)
    params = dict(model.named_parameters())
    unknown = [n for n in masks if n not in params]
    if unknown:
        raise ValueError(f"mask for {unknown[0]!r}, which the model does not have")
    dev_masks = {n: m.to(device) for n, m in masks.items()}
    restore = {n: p.requires_grad for n, p in params.items()}
    trainable = [p for p in params.values() if p.is_floating_point()]
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    order, cursor, losses = torch.randperm(len(x), generator=gen), 0, []
    bake(model, dev_masks)
    try:
        model.train()
        for step in range(1, steps + 1):
            if cursor + batch_size > len(order) and cursor > 0:
                order, cursor = torch.randperm(len(x), generator=gen), 0
            idx = order[cursor : cursor + batch_size]
            cursor += batch_size
            logits = class_scores(model(x[idx].to(device)))
            if y is not None:
                loss = task_loss(logits, y[idx], task, reduction="mean")
            else:
                teacher = F.log_softmax(soft_targets[idx].to(device).float(), dim=-1)
                loss = F.kl_div(F.log_softmax(logits.float(), dim=-1), teacher, log_target=True, reduction="batchmean")
            opt.zero_grad(set_to_none=False)
            loss.backward()
            with torch.no_grad():
                for name, mask in dev_masks.items():
                    grad = params[name].grad
                    if grad is not None:
                        grad.masked_fill_(~mask, 0)
            opt.step()
            bake(model, dev_masks)
            losses.append(float(loss.detach()))
            if progress:
                progress(FinetuneProgress(step, steps, losses[-1]))
    finally:
        model.eval()
        for n, p in params.items():
            p.requires_grad_(restore[n])
            p.grad = None
    return losses
