"""Apply a whole schedule to a model and measure it: pruned, after BatchNorm recalibration, after fine-tuning.

``measure_schedule`` works on a copy of the workload's model, so the workload stays dense. The copy is pruned by
``prune.prune``, as the export prunes it: a channel schedule is resolved to the model's coupled groups and its
channels are removed for real where the model can be shrunk, so the measured model is the exported one. Each stage
is measured on the eval set against the dense model's outputs; the totals (global sparsity, parameters and FLOPs
kept) count the same resolved schedule. BatchNorm recalibration runs ``batchnorm.recalibrate`` with its defaults,
as the export does.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from analysis.core import batchnorm, criteria
from analysis.core.data import EvalData
from analysis.core.granularity import schedule_layers
from analysis.core.metrics import batch_for, dense_pass, evaluate, predict
from analysis.core.modules import copy_model
from analysis.schedule.finetune import FinetuneProgress, finetune
from analysis.schedule.prune import prune
from analysis.schedule.schedule import Schedule
from analysis.schedule.totals import Accountant
from analysis.sensitivity.device import check_device
from analysis.workload.onnx import refuse
from analysis.workload.workload import Workload


@dataclass
class Measurement:
    """Metrics of each stage (``pruned``, ``bn_recalibrated``, ``finetuned``) and the schedule's totals."""

    dense: dict
    stages: dict[str, dict]
    totals: dict
    final: str
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The flat object ``prunescope evaluate`` prints: the final stage's metrics at the top level."""
        return {**self.stages[self.final], **self.totals, "stage": self.final, "dense": self.dense,
                **{name: self.stages.get(name) for name in ("pruned", "bn_recalibrated", "finetuned")},
                **self.info}


def measure_schedule(workload: Workload, schedule: Schedule, *, bn_recalibrate: bool = False,
                     train: EvalData | None = None, finetune_steps: int = 0, lr: float = 0.01,
                     batch_size: int = 128, calib_samples: int = 256, bn_batches: int = 8,
                     device: str = "cpu", seed: int = 0,
                     progress: Callable[[FinetuneProgress], None] | None = None) -> Measurement:
    """Prune a copy of the model by ``schedule`` and measure it at each stage.

    BatchNorm recalibration (on ``train`` if given, else on the eval set) is always measured when the model
    has BatchNorm; ``bn_recalibrate`` says whether fine-tuning starts from it and whether it is the final
    stage. ``finetune_steps`` > 0 needs ``train``.

    Example::

        >>> from analysis import Schedule, load_workload, measure_schedule
        >>> workload = load_workload("sample:digits-mlp", "sample:digits")
        >>> m = measure_schedule(workload, Schedule({"fc1": 0.5, "fc2": 0.5}))
        >>> m.final, round(m.totals["global_sparsity"], 4), m.stages["pruned"]["accuracy"] <= m.dense["accuracy"] + 0.01
        ('pruned', 0.4812, True)
    """
    if finetune_steps < 0:
        raise ValueError(f"fine-tuning steps must be zero or more, got {finetune_steps}")
    if finetune_steps and train is None:
        raise ValueError("fine-tuning needs training data (--train-data); the eval set is for measuring only")
    if finetune_steps:
        refuse(workload.model, "fine-tuning", "it needs gradients")
    dev = check_device(device)
    x, y, task = workload.data.x, workload.data.y, workload.task
    batch_size = batch_for(4 * math.prod(workload.output_shape or (workload.num_classes,)), batch_size)
    model = copy_model(workload.model).to(dev).eval()
    layers = schedule_layers(model, x[:1].to(dev), schedule.granularity, schedule.sparsities)
    schedule.validate(layers)
    stats = criteria.calibration_stats(model, layers, workload.data, schedule.criterion, calib_samples, batch_size,
                                       dev)
    accountant = Accountant.from_model(model, x[:1].to(dev), layers, schedule.criterion, schedule.granularity,
                                       stats, seed)
    totals = accountant.totals(schedule).fractions()
    dense_logits, _ = dense_pass(model, x, y, batch_size, dev, task)
    reference = None if dense_logits is not None else workload.model.to(dev).eval()
    dense = evaluate(model, x, y, dense_logits, batch_size, dev, task, reference).metrics()
    pruned = prune(model, layers, schedule, accountant, stats, seed)
    model = pruned.model.to(dev).eval()

    def measure() -> dict:
        return evaluate(model, x, y, dense_logits, batch_size, dev, task, reference).metrics()

    stages = {"pruned": measure()}
    bn_data = train.x if train is not None else x
    info = {"criterion": schedule.criterion, "granularity": schedule.granularity,
            "layers_pruned": len(pruned.schedule.sparsities), "has_batchnorm": batchnorm.has_batchnorm(model),
            "shrunk": pruned.shrunk, "applied": pruned.schedule.sparsities, "resolved": pruned.notes,
            "samples": len(x)}
    final = "pruned"
    if batchnorm.has_batchnorm(model):
        # Without bn_recalibrate the recalibrated statistics are measured, then put back as they were.
        with contextlib.nullcontext() if bn_recalibrate else batchnorm.preserved(model):
            batchnorm.recalibrate(model, bn_data, batches=bn_batches, device=dev)
            stages["bn_recalibrated"] = measure()
        if bn_recalibrate:
            final = "bn_recalibrated"
        info["bn_data"] = train.spec if train is not None else workload.data.spec
    if finetune_steps:
        soft = predict(workload.model.to(dev), train.x, batch_size, dev) if train.y is None else None
        losses = finetune(model, pruned.keep, train.x, train.y, finetune_steps, lr=lr, soft_targets=soft, seed=seed,
                          device=dev, progress=progress, task=task)
        stages["finetuned"] = measure()
        info.update(finetune_steps=finetune_steps, finetune_lr=lr, train_data=train.spec,
                    finetune_loss_first=losses[0], finetune_loss_last=losses[-1])
        final = "finetuned"
    return Measurement(dense, stages, totals, final, info)
