"""What decides a lab's numbers (``LabConfig``), checked at the door, and the identity a lab is stored under.

Budgets are in epochs of the training data (``steps_per_epoch`` SGD steps of ``batch_size`` samples each), the
unit the literature's recovery ranges use. The defaults are sized for a CPU: the bundled samples finish every
strategy in a few minutes.

- ``epochs``: the recovery budget, fine-tuning with the final mask fixed; the same for every strategy, so their
  curves compare.
- ``rounds``, ``round_epochs``: iterative magnitude pruning prunes in ``rounds`` steps, training
  ``round_epochs`` between two of them (the last round's training is the recovery budget).
- ``rewind_epochs``: without a checkpoint, the rewinding point is the dense weights after this much re-training.
- ``gradual_epochs``, ``gradual_steps``: gradual magnitude pruning reaches the target in ``gradual_steps``
  pruning steps spread over ``gradual_epochs`` of training.
- ``evals_per_epoch``: points of each curve per epoch; ``tolerance``: the drop counted as recovered.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace

import torch

from analysis.core.data import tensor_bytes
from analysis.core.metric_table import CHANCE_METRICS
from analysis.deploy.export import EXPORTERS
from analysis.schedule.allocate import METHODS, Target
from analysis.sensitivity.device import check_device

EXECUTION_FIELDS = ("strategies", "tolerance", "metric", "latency_repeats")  # not in the identity: see `identity`
MIN_SCRATCH_EPOCHS = 2.0  # training from scratch with less cannot tell a strategy from its initialisation
FLOAT_FIELDS = ("epochs", "tolerance", "round_epochs", "rewind_epochs", "gradual_epochs", "lr", "momentum")


@dataclass(frozen=True)
class LabConfig:
    """Everything that decides a lab's numbers (``strategies`` empty: every registered strategy).

    Example::

        >>> from analysis import LabConfig, Target
        >>> config = LabConfig(Target("params", 5000), strategies=("imp", "snip"), epochs=20).validated()
        >>> config.target, config.rounds, config.allocation
        (Target(kind='params', value=5000.0), 3, 'uniform')
    """

    target: Target = Target("sparsity", 0.8)
    strategies: tuple[str, ...] = ()
    allocation: str = "uniform"
    epochs: float = 10.0
    evals_per_epoch: int = 4
    tolerance: float = 0.01
    metric: str | None = None
    rounds: int = 3
    round_epochs: float = 1.0
    rewind_epochs: float = 1.0
    gradual_epochs: float = 2.0
    gradual_steps: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 64
    eval_batch_size: int = 128
    calib_samples: int = 256
    seed: int = 0
    export: bool = True
    exporter: str = "torchscript"
    latency_repeats: int = 20
    device: str = "cpu"

    def validated(self) -> "LabConfig":
        """A checked copy; a bad value is a ``ValueError`` that names it."""
        if not isinstance(self.target, Target):
            raise ValueError(f"the target must be a Target (sparsity, params or flops), got {self.target!r}")
        if self.allocation not in METHODS:
            raise ValueError(f"unknown allocation {self.allocation!r}; choose one of {', '.join(METHODS)}")
        for name in ("epochs", "round_epochs", "rewind_epochs", "gradual_epochs"):
            _non_negative(name, getattr(self, name))
        for name in ("evals_per_epoch", "rounds", "gradual_steps", "batch_size", "eval_batch_size", "calib_samples",
                     "latency_repeats"):
            _positive_int(name, getattr(self, name))
        if not (_number(self.lr) and self.lr > 0):
            raise ValueError(f"the learning rate must be positive, got {self.lr!r}")
        if not (_number(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (_number(self.tolerance) and 0 <= self.tolerance < 1):
            raise ValueError(f"tolerance {self.tolerance!r} must be a drop in [0, 1) (0.01 = 1 point)")
        if self.metric is not None and self.metric not in CHANCE_METRICS:
            raise ValueError(f"the lab measures {' or '.join(CHANCE_METRICS)}, not {self.metric!r}")
        if self.exporter not in EXPORTERS:
            raise ValueError(f"unknown exporter {self.exporter!r}; choose one of {', '.join(EXPORTERS)}")
        check_device(self.device)
        floats = {name: float(getattr(self, name)) for name in FLOAT_FIELDS}  # 1 and 1.0: one identity
        return replace(self, target=Target(self.target.kind, float(self.target.value)),
                       strategies=tuple(dict.fromkeys(self.strategies)), **floats)

    def settings(self) -> dict:
        """The configuration as plain JSON data."""
        d = asdict(self)
        d["target"] = {"kind": self.target.kind, "value": self.target.value}
        d["strategies"] = list(self.strategies)
        return d

    @classmethod
    def from_settings(cls, d: dict) -> "LabConfig":
        """The configuration ``settings`` wrote (a stored lab, ``lab.json``)."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["target"] = Target(d["target"]["kind"], d["target"]["value"])
        known["strategies"] = tuple(d.get("strategies", ()))
        return cls(**known)


def identity(config: LabConfig, model_fp: str, data_fp: str, train_fp: str | None, rewind_fp: str | None) -> dict:
    """What decides a lab's numbers: the weights, the eval and training data, the rewinding checkpoint and every
    setting but the strategy list (each strategy is its own units: adding one to a lab reuses the others), the
    tolerance and metric (read off the stored curves) and the latency repeats (timings are not numbers to
    reproduce)."""
    settings = {k: v for k, v in config.settings().items() if k not in EXECUTION_FIELDS}
    return {"model_fp": model_fp, "data_fp": data_fp, "train_fp": train_fp, "rewind_fp": rewind_fp, **settings}


def identity_key(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def state_fingerprint(state: dict[str, torch.Tensor] | None) -> str | None:
    """A hash of a state dict (the rewinding checkpoint), or ``None``."""
    if state is None:
        return None
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor_bytes(t.detach().float()))
    return h.hexdigest()[:16]


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _non_negative(name: str, value: object) -> None:
    if not (_number(value) and value >= 0):
        raise ValueError(f"{name} must be a number of epochs, 0 or more, got {value!r}")


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}")
