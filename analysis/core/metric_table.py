"""What each metric means, in one table: its name, direction, chance level, scale and whether it needs labels.

Every view, check and choice list reads this table (the CLI's ``--metric`` choices, the pages' selectboxes, the
drop direction of a profile, the chance floor of a prediction, the percent scale of a plot), so a metric added
here is offered and read the same way everywhere. The sums behind each metric are ``core.metrics.Sums``.
Torch-free: the CLI builds its choices from it without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One metric of a scan cell.

    ``bounded``: a fraction of samples in [0, 1] that falls to chance level (1 / classes) when a layer is
    destroyed; ``percent``: shown in percentage points; ``needs_labels``: undefined on unlabelled data."""

    name: str
    higher_is_better: bool
    bounded: bool
    needs_labels: bool
    percent: bool
    description: str


_TABLE = (
    Metric("accuracy", True, True, True, True, "top-1 accuracy against the labels"),
    Metric("loss", False, False, False, False,
           "mean cross-entropy against the labels (without labels: against the dense model's top-1)"),
    Metric("agreement", True, True, False, True, "fraction of samples whose top-1 equals the dense model's"),
    Metric("kl", False, False, False, False, "mean KL(dense || pruned) of the softmax outputs"),
    Metric("logit_cosine", True, False, False, False, "mean per-sample cosine similarity of the logits to dense"),
    Metric("logit_rel_l2", False, False, False, False, "||pruned - dense|| / ||dense|| over all logits"),
)
METRIC_TABLE: dict[str, Metric] = {m.name: m for m in _TABLE}
METRICS = tuple(METRIC_TABLE)
HIGHER_IS_BETTER = {m.name: m.higher_is_better for m in _TABLE}
CHANCE_METRICS = tuple(m.name for m in _TABLE if m.bounded)
PERCENT_METRICS = tuple(m.name for m in _TABLE if m.percent)


def metric_info(metric: str) -> Metric:
    """The table's row for ``metric``; an unknown name is a ``ValueError`` that lists the known ones."""
    if metric not in METRIC_TABLE:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return METRIC_TABLE[metric]


def default_metric(labelled: bool) -> str:
    """Accuracy with labels, else agreement with the dense model (label-free)."""
    return "accuracy" if labelled else "agreement"


def check_metric(metric: str, labelled: bool = True) -> str:
    """``metric`` if it is known and can be measured on data with (or without) labels; else a ``ValueError``."""
    if metric_info(metric).needs_labels and not labelled:
        raise ValueError(f"{metric} needs labelled data; this data has no labels (use agreement, loss or kl)")
    return metric


def metric_choices(labelled: bool = True, bounded: bool = False) -> tuple[str, ...]:
    """The metrics a user may pick: those the data can measure, only the bounded ones when ``bounded``."""
    return tuple(m.name for m in _TABLE if (labelled or not m.needs_labels) and (m.bounded or not bounded))


def drop(metric: str, baseline: float, value: float) -> float:
    """How much worse than dense a value is (positive = worse), whichever way the metric points."""
    return baseline - value if HIGHER_IS_BETTER[metric] else value - baseline


def chance_level(num_classes: int | None) -> float:
    """The accuracy (or agreement) of a destroyed model: 1 / classes (0 when the class count is unknown)."""
    return 1.0 / num_classes if num_classes else 0.0


def drop_scale(metric: str) -> tuple[float, str]:
    """How a drop of ``metric`` is shown: percentage points for the fraction metrics, the metric's unit else."""
    return (100.0, "points") if metric_info(metric).percent else (1.0, metric)
