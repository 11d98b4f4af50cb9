"""What a lab prepares once (``LabContext``): the checked configuration, the layers, the dense model's outputs on
the eval set, the training data with its targets, the profiles its allocations read, and the hook that every
training step calls (progress and cancel)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from analysis.core.data import EvalData
from analysis.core.layers import Layer, find_layers
from analysis.core.metric_table import check_metric, default_metric
from analysis.core.metrics import predict
from analysis.core.modules import copy_model
from analysis.core.profile import SensitivityProfile
from analysis.lab.config import LabConfig
from analysis.sensitivity.device import check_device
from analysis.workload.models import load_state
from analysis.workload.onnx import refuse
from analysis.workload.workload import Workload


class LabError(ValueError):
    """A lab that cannot run as asked; the message says why and what to do."""


class LabStopped(Exception):
    """The lab was cancelled (``should_stop``); the units finished so far are kept."""


@dataclass
class LabContext:
    """What every unit of a lab reads; ``tick`` is called after every training step (progress, cancel)."""

    workload: Workload
    train: EvalData | None
    config: LabConfig
    layers: list[Layer]
    dense_logits: torch.Tensor
    metric: str
    soft_targets: torch.Tensor | None = None
    rewind: dict[str, torch.Tensor] | None = None
    profiles: dict[str, SensitivityProfile] = field(default_factory=dict)
    tick: Callable[[], None] = lambda: None

    @property
    def device(self) -> torch.device:
        return check_device(self.config.device)

    @property
    def example(self) -> torch.Tensor:
        return self.workload.data.x[:1].to(self.device)

    @property
    def steps_per_epoch(self) -> int:
        """SGD steps in one pass over the training data (0 without training data)."""
        return math.ceil(len(self.train) / self.config.batch_size) if self.train is not None else 0

    def steps(self, epochs: float) -> int:
        """Training steps in ``epochs`` passes over the training data."""
        return round(epochs * self.steps_per_epoch)

    @property
    def eval_every(self) -> int:
        """Training steps between two points of a curve."""
        return max(1, round(self.steps_per_epoch / self.config.evals_per_epoch))

    def dense_copy(self) -> nn.Module:
        """A copy of the dense model to prune (the workload's own model is never changed)."""
        return copy_model(self.workload.model).to(self.device).eval()


def prepare_lab(workload: Workload, train: EvalData | None, config: LabConfig,
                rewind: dict[str, torch.Tensor] | None = None) -> LabContext:
    """Check the lab's inputs at the door and compute what every unit shares."""
    config = config.validated()
    check_inputs(workload, train, rewind)
    device = check_device(config.device)
    model = workload.model.to(device)
    layers = find_layers(model, workload.data.x[:1].to(device))
    if not layers:
        raise LabError(f"{workload.model_spec} has no prunable layers")
    metric = check_metric(config.metric or default_metric(workload.data.labelled), workload.data.labelled)
    dense_logits = predict(model, workload.data.x, config.eval_batch_size, device)
    soft = None if train is None or train.y is not None else predict(model, train.x, config.eval_batch_size, device)
    return LabContext(workload, train, config, layers, dense_logits, metric, soft, rewind)


def check_inputs(workload: Workload, train: EvalData | None, rewind: dict[str, torch.Tensor] | None) -> None:
    """Refuse, with a one-line ``LabError``, a model the lab cannot train, training data that does not fit the
    model and a rewinding checkpoint that does not fit it (before anything is computed or stored)."""
    refuse(workload.model, "the strategy lab", "it trains the pruned models")
    if train is not None:
        _check_train(workload, train)
    if rewind is not None:
        load_state(copy_model(workload.model), rewind, "the rewinding checkpoint")


def _check_train(workload: Workload, train: EvalData) -> None:
    if len(train) == 0:
        raise LabError(f"the training data {train.spec} holds no samples")
    if tuple(train.x.shape[1:]) != tuple(workload.input_shape):
        raise LabError(f"the training data {train.spec} has inputs of shape {list(train.x.shape[1:])}, the eval "
                       f"data {list(workload.input_shape)}")
    if train.y is not None and len(train.y) and int(train.y.max()) >= workload.num_classes:
        raise LabError(f"the training data {train.spec} has label {int(train.y.max())}; {workload.model_spec} "
                       f"has {workload.num_classes} classes")
