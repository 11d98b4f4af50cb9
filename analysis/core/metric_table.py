"""What each metric means, in one table: its name, direction, chance level, scale, whether it needs labels and
which tasks it applies to.

Every view, check and choice list reads this table (the CLI's ``--metric`` choices, the pages' selectboxes, the
drop direction of a profile, the chance floor of a prediction, the percent scale of a plot), so a metric added
here is offered and read the same way everywhere. The sums behind each metric are ``core.metrics.Sums``.
Torch-free: the CLI builds its choices from it without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

# What a model's outputs are, which decides how they are measured against the dense model's:
# ``classification``: class scores (N, classes), one prediction per sample (images, sequence classifiers);
# ``causal-lm``: next-token scores (N, positions, vocabulary), one prediction per real (unpadded) position;
# ``encoder``: sentence embeddings (N, features), the mean over the real tokens of the last hidden states.
TASKS = ("classification", "causal-lm", "encoder")
CLASSIFICATION, CAUSAL_LM, ENCODER = TASKS
_SCORES = (CLASSIFICATION, CAUSAL_LM)  # tasks whose outputs are class (or next-token) scores


@dataclass(frozen=True)
class Metric:
    """One metric of a scan cell.

    ``bounded``: a fraction of predictions in [0, 1] that falls to chance level (1 / classes) when a layer is
    destroyed; ``percent``: shown in percentage points; ``needs_labels``: undefined on unlabelled data;
    ``tasks``: the tasks it is measured for (elsewhere it is empty). A prediction is a sample, or for a causal
    LM one real position of a sequence (its next token). ``label`` is its name in a sentence (``metric_label``)."""

    name: str
    higher_is_better: bool
    bounded: bool
    needs_labels: bool
    percent: bool
    description: str
    tasks: tuple[str, ...] = _SCORES
    label: str = ""


_TABLE = (
    Metric("accuracy", True, True, True, True,
           "top-1 accuracy against the labels (causal LMs: of the next token, over real positions)"),
    Metric("loss", False, False, False, False,
           "mean cross-entropy against the labels (without labels: against the dense model's top-1; causal LMs: "
           "mean next-token loss over real positions)"),
    Metric("perplexity", False, False, True, False, "exp(mean next-token loss) over real positions",
           (CAUSAL_LM,)),
    Metric("agreement", True, True, False, True,
           "fraction of predictions whose top-1 equals the dense model's (causal LMs: next-token top-1 per position)",
           label="top-1 agreement with dense"),
    Metric("kl", False, False, False, False, "mean KL(dense || pruned) of the softmax outputs, per prediction",
           label="KL divergence from dense"),
    Metric("logit_cosine", True, False, False, False, "mean per-prediction cosine similarity of the logits to dense"),
    Metric("logit_rel_l2", False, False, False, False, "||pruned - dense|| / ||dense|| over all logits"),
    Metric("embedding_cosine", True, False, False, False,
           "mean per-sample cosine similarity of the sentence embeddings (mean-pooled over real tokens) to dense",
           (ENCODER,), "embedding cosine to dense"),
)
METRIC_TABLE: dict[str, Metric] = {m.name: m for m in _TABLE}
METRICS = tuple(METRIC_TABLE)
HIGHER_IS_BETTER = {m.name: m.higher_is_better for m in _TABLE}
CHANCE_METRICS = tuple(m.name for m in _TABLE if m.bounded)
PERCENT_METRICS = tuple(m.name for m in _TABLE if m.percent)


def check_task(task: str) -> str:
    """``task`` if it is one of ``TASKS``; else a ``ValueError`` that lists them."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return task


def applies(metric: str, task: str) -> bool:
    """Whether ``metric`` is measured for ``task`` (perplexity only for causal LMs, embedding cosine only for
    encoders, the rest not for encoders)."""
    return task in metric_info(metric).tasks


def metric_info(metric: str) -> Metric:
    """The table's row for ``metric``; an unknown name is a ``ValueError`` that lists the known ones."""
    if metric not in METRIC_TABLE:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return METRIC_TABLE[metric]


def metric_label(metric: str, task: str = CLASSIFICATION) -> str:
    """``metric``'s name in a sentence for ``task``: a causal LM's predictions are next tokens (``next-token
    agreement with dense``, not a classifier's ``top-1 agreement``)."""
    info = metric_info(metric)
    label = info.label or info.name.replace("_", " ")
    if task == CAUSAL_LM and info.tasks == _SCORES:
        return "next-token " + label.removeprefix("top-1 ")
    return label


def task_metrics(labelled: bool, task: str = CLASSIFICATION) -> tuple[str, ...]:
    """The metrics that say how good a pruned model is for ``task`` (an export's quality): the task's default
    metric (``default_metric``) and, where the task has top-1 predictions, agreement with the dense model."""
    names = [default_metric(labelled, task)] + (["agreement"] if applies("agreement", task) else [])
    return tuple(m for m in METRICS if m in names and (labelled or not metric_info(m).needs_labels))


def default_metric(labelled: bool, task: str = CLASSIFICATION) -> str:
    """Accuracy with labels, else agreement with the dense model (label-free); perplexity for a causal LM, the
    embedding cosine to dense for an encoder."""
    if task == CAUSAL_LM:
        return "perplexity"
    if task == ENCODER:
        return "embedding_cosine"
    return "accuracy" if labelled else "agreement"


def check_metric(metric: str, labelled: bool = True, task: str = CLASSIFICATION) -> str:
    """``metric`` if it is known and can be measured for ``task`` on data with (or without) labels; else a
    ``ValueError``."""
    if not applies(metric, task):
        raise ValueError(f"{metric} is not measured for a {task} model; choose one of "
                         f"{', '.join(metric_choices(labelled, task=task))}")
    if metric_info(metric).needs_labels and not labelled:
        raise ValueError(f"{metric} needs labelled data; this data has no labels (use agreement, loss or kl)")
    return metric


def metric_choices(labelled: bool = True, bounded: bool = False, task: str = CLASSIFICATION) -> tuple[str, ...]:
    """The metrics a user may pick: those measured for ``task`` that the data can measure, only the bounded ones
    when ``bounded``."""
    return tuple(m.name for m in _TABLE if task in m.tasks and (labelled or not m.needs_labels)
                 and (m.bounded or not bounded))


def drop(metric: str, baseline: float, value: float) -> float:
    """How much worse than dense a value is (positive = worse), whichever way the metric points."""
    return baseline - value if HIGHER_IS_BETTER[metric] else value - baseline


def chance_level(num_classes: int | None) -> float:
    """The accuracy (or agreement) of a destroyed model: 1 / classes (0 when the class count is unknown)."""
    return 1.0 / num_classes if num_classes else 0.0


def drop_scale(metric: str) -> tuple[float, str]:
    """How a drop of ``metric`` is shown: percentage points for the fraction metrics, the metric's unit else."""
    return (100.0, "points") if metric_info(metric).percent else (1.0, metric)


def drop_text(value: float, unit: str) -> str:
    """``"1 point"``, ``"0.5 points"``, ``"0.02 loss"``: a drop already scaled by ``drop_scale``, in its unit
    (singular for exactly one point)."""
    return f"{value:g} {unit[:-1] if unit == 'points' and value == 1 else unit}"
