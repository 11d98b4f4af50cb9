"""Error bars of a sensitivity cell, and decisions that stay valid however often a sequential scan looks.

A cell (one layer at one sparsity) is an estimate from a finite eval set. Everything here is computed from the
cell's sums (``core.metrics.Sums``: counts, and sums and sums of squares of per-sample values), so shards add up
and no per-sample value is kept. The eval set is treated as an i.i.d. sample of the data the model will see;
an interval covers the value the cell would have on that distribution, and only the eval set's sampling error
counts (not an unrepresentative eval set, nor another pruning seed). A drop is "how much worse than dense":
positive = worse, always paired (the same samples through the dense and the pruned model).

Each metric has two quantities, its value and its drop, each one of three kinds (``ERROR_BARS``, one place):

- ``Proportion`` (accuracy, agreement; the agreement drop is the disagreement rate, since dense agrees with
  itself): the Wilson score interval.
- ``PairedDifference`` (the accuracy drop ``(lost - gained) / n``; ``lost``: dense right and pruned wrong,
  ``gained``: the reverse): Tango's (1998) score interval, the inverted score test of the paired difference. It
  excludes 0 exactly when McNemar's test rejects, has non-zero width with no discordant pairs, and stays inside
  [-1, 1]. Rows stored before the paired counts existed fall back to Newcombe's interval for two independent
  proportions (wider: pairing usually narrows it).
- ``Mean`` (loss, the paired loss drop, KL): Student's t interval from ``n``, the sum and the sum of squares.

Sequential scans look after every shard, so the fixed-sample intervals would be too narrow after optional
stopping. They use confidence sequences instead, valid at every sample at once: for counts, a betting
sequence (Waudby-Smith & Ramdas 2023: a uniform mixture of fixed bets, whose wealth depends on the counts only;
exact for any n); for means, the asymptotic sequence of Waudby-Smith et al. (2021, Robbins' normal mixture),
which is asymptotic, so a mean may settle only after ``MIN_N_MEAN`` samples. ``decide`` asks "is the drop
within the tolerance?": ``within``, ``beyond`` or ``open``; over all looks together the chance of a wrong
settled answer is at most ``1 - confidence``.

Everything is vectorised: a quantity takes a mapping of sum names to arrays (a tidy table's columns) or scalars.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

Sums = Mapping[str, object]  # sum name -> array or scalar (a DataFrame's columns, a Sums.to_dict())
DECISIONS = ("open", "within", "beyond")
MIN_N_MEAN = 1000  # samples before a mean (loss, KL) may settle: its sequence is only asymptotically valid
BET_FRACTIONS = 0.99 * 0.5 ** np.arange(8)  # the bets mixed: fractions of the largest safe bet, factor 2 apart
_STEPS = 60  # bisection steps for interval ends: 2**-60 of the range


def z_value(confidence: float) -> float:
    """The two-sided normal quantile of ``confidence`` (1.96 at 0.95)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def check_confidence(confidence: object) -> float:
    """``confidence`` as a float in (0, 1), or a ``ValueError`` that says what it is."""
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence!r} is outside (0, 1): it is the level of the intervals "
                         "(e.g. 0.95)")
    return float(confidence)


def _array(values: object) -> np.ndarray:
    """Floats, with ``None`` (a sum not recorded) as NaN."""
    if values is None:
        return np.array(math.nan)
    if hasattr(values, "to_numpy"):
        return values.to_numpy(dtype=float, na_value=math.nan)
    if isinstance(values, (list, tuple)):
        values = [math.nan if v is None else v for v in values]
    return np.asarray(values, dtype=float)


def columns(s: Sums) -> dict[str, np.ndarray]:
    """The sums as 1-d float arrays of one length (scalars are one cell)."""
    arrays = {k: np.atleast_1d(_array(v)) for k, v in s.items() if not isinstance(v, str)}
    size = max((len(a) for a in arrays.values()), default=1)
    return {k: np.broadcast_to(a, (size,)) if len(a) == 1 else a for k, a in arrays.items()}


def _bisect(f, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:  # noqa: ANN001 - f: array -> bool array
    """The boundary in ``[lo, hi]`` where ``f`` (true below it, false above it) turns false, per element."""
    lo, hi = lo.copy(), hi.copy()
    for _ in range(_STEPS):
        mid = (lo + hi) / 2
        below = f(mid)
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return (lo + hi) / 2


# ----------------------------------------------------------------------------------- fixed-sample intervals


def wilson(k: object, n: object, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of the proportion ``k / n``."""
    k, n, z = _array(k), _array(n), z_value(confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        lo = np.where(k <= 0, 0.0, np.clip(centre - half, 0.0, 1.0))
        hi = np.where(k >= n, 1.0, np.clip(centre + half, 0.0, 1.0))
    bad = ~(n > 0)
    return np.where(bad, math.nan, lo), np.where(bad, math.nan, hi)


def tango_statistic(delta: np.ndarray, n: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Tango's score statistic for ``H0: (p_b - p_c) = delta``, with the restricted maximum-likelihood estimate
    of ``p_c`` in closed form. It decreases in ``delta``; at ``delta = 0`` it is McNemar's ``(b - c) / sqrt(b + c)``."""
    a_ = 2.0 * n
    b_ = -b - c + (2.0 * n - b + c) * delta
    c_ = -c * delta * (1.0 - delta)
    p_c = (np.sqrt(np.maximum(b_ * b_ - 4 * a_ * c_, 0.0)) - b_) / (2 * a_)
    var = n * (2 * p_c + delta * (1 - delta))
    num = b - c - n * delta
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, num / np.sqrt(np.maximum(var, 1e-300)), np.sign(num) * np.inf)


def tango(n: object, b: object, c: object, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Tango's score interval of the paired difference ``(b - c) / n``: every ``delta`` the score test at
    ``confidence`` does not reject. ``b``: dense right and pruned wrong; ``c``: dense wrong and pruned right."""
    n, b, c, z = _array(n), _array(b), _array(c), z_value(confidence)
    ok = (n > 0) & np.isfinite(b) & np.isfinite(c)
    n1, b1, c1 = np.where(ok, n, 1.0), np.where(ok, b, 0.0), np.where(ok, c, 0.0)
    est = (b1 - c1) / n1
    lo = _bisect(lambda d: tango_statistic(d, n1, b1, c1) > z, np.full_like(est, -1.0), est)
    hi = _bisect(lambda d: tango_statistic(d, n1, b1, c1) >= -z, est, np.full_like(est, 1.0))
    return np.where(ok, lo, math.nan), np.where(ok, hi, math.nan)


def newcombe(n: object, k_dense: object, k_pruned: object, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's (1998) hybrid score interval of ``(k_dense - k_pruned) / n`` for two independent proportions:
    the fallback for cells stored without paired counts. Pairing only narrows the truth's spread when the two
    models err on the same samples, so on paired data this interval is wide, not narrow."""
    n, kd, kp = _array(n), _array(k_dense), _array(k_pruned)
    d_lo, d_hi = wilson(kd, n, confidence)
    p_lo, p_hi = wilson(kp, n, confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        pd_, pp = kd / n, kp / n
        est = pd_ - pp
        return (est - np.sqrt((pd_ - d_lo) ** 2 + (p_hi - pp) ** 2),
                est + np.sqrt((d_hi - pd_) ** 2 + (pp - p_lo) ** 2))


def t_interval(n: object, total: object, squares: object, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Student's t interval of a mean from ``n``, the sum and the sum of squares of the per-sample values."""
    from scipy.special import stdtrit  # the t quantile; SciPy only when intervals of means are asked for

    n, total, squares = _array(n), _array(total), _array(squares)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / n
        var = np.maximum(squares - total * total / n, 0.0) / (n - 1)
        t = np.where(n > 1, stdtrit(np.maximum(n - 1, 1), 0.5 + confidence / 2), np.inf)
        half = np.where(n > 1, t * np.sqrt(var / n), np.inf)
    return mean - half, mean + half


# ----------------------------------------------------------------------------------- confidence sequences


def log_wealth(values: np.ndarray, counts: np.ndarray, m: np.ndarray, lo: float, hi: float,
               side: str) -> np.ndarray:
    """Log wealth of the uniform mixture of fixed bets against ``H0: mean >= m`` (``side="down"``: betting the
    values are small) or ``H0: mean <= m`` (``"up"``), per cell, for data in ``[lo, hi]`` that took ``values``
    ``counts[cell]`` times.

    Each bet multiplies its wealth by ``1 + lam * (x - m)`` per sample, ``lam`` fixed, so the product depends on
    the counts only (any order of the samples gives it), and every factor is at least ``1 - 0.99``. Under
    ``H0`` each bet's wealth, and so the mixture, is a nonnegative supermartingale: by Ville's inequality it
    ever reaches ``1 / alpha`` with probability at most ``alpha``, at any sample, however often one looks.
    """
    span = np.maximum(m - lo if side == "up" else hi - m, 1e-300)
    lam = BET_FRACTIONS[:, None] / span[None, :] * (1.0 if side == "up" else -1.0)  # (bets, cells)
    with np.errstate(invalid="ignore"):
        terms = np.log1p(lam[:, :, None] * (values[None, None, :] - m[None, :, None]))  # (bets, cells, values)
    per_bet = np.where(counts[None] > 0, terms * counts[None], 0.0).sum(axis=-1)
    top = per_bet.max(axis=0)
    return top + np.log(np.exp(per_bet - top).mean(axis=0))


def betting_sequence(values: np.ndarray, counts: np.ndarray, lo: float, hi: float,
                     confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """The two-sided betting confidence sequence of the mean (each side at ``(1 - confidence) / 2``): the means
    neither one-sided test rejects."""
    bar = math.log(2 / (1 - confidence))
    n = counts.sum(axis=1)
    est = np.where(n > 0, counts @ values / np.maximum(n, 1), (lo + hi) / 2)
    upper = _bisect(lambda m: log_wealth(values, counts, m, lo, hi, "down") < bar, est, np.full_like(est, hi))
    lower = _bisect(lambda m: log_wealth(values, counts, m, lo, hi, "up") >= bar, np.full_like(est, lo), est)
    return lower, upper


def asymptotic_margin(n: np.ndarray, sd: np.ndarray, alpha: float, planned: float) -> np.ndarray:
    """Half-width of the two-sided asymptotic confidence sequence (Waudby-Smith et al. 2021, Robbins' normal
    mixture) after ``n`` samples, tuned to be tightest near an eighth of the ``planned`` samples."""
    t_opt = max(planned / 8, 100.0)
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / t_opt
    with np.errstate(invalid="ignore", divide="ignore"):
        return sd * np.sqrt(2 * (n * rho2 + 1) / (n * n * rho2) * np.log(np.sqrt(n * rho2 + 1) / alpha))


# ------------------------------------------------------------------------------------------- the quantities


@dataclass(frozen=True)
class Proportion:
    """``count / n`` (or ``(n - count) / n`` with ``complement``): accuracy, agreement, the disagreement rate."""

    count: str
    complement: bool = False

    def needs(self) -> tuple[str, ...]:
        return ("n", self.count)

    def ready(self, s: Sums) -> bool:
        return all(name in s for name in self.needs())

    def _k(self, s: Sums) -> tuple[np.ndarray, np.ndarray]:
        n, k = _array(s["n"]), _array(s[self.count])
        return n, n - k if self.complement else k

    def estimate(self, s: Sums) -> np.ndarray:
        n, k = self._k(s)
        with np.errstate(invalid="ignore", divide="ignore"):
            return k / n

    def interval(self, s: Sums, confidence: float) -> tuple[np.ndarray, np.ndarray]:
        n, k = self._k(s)
        return wilson(k, n, confidence)

    def counts(self, s: Sums) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Values, their counts per cell, and the range, for the betting sequence."""
        n, k = self._k(s)
        return np.array([1.0, 0.0]), np.stack([k, n - k], axis=-1).reshape(-1, 2), 0.0, 1.0


@dataclass(frozen=True)
class PairedDifference:
    """``(up - down) / n`` for paired binary outcomes: the accuracy drop (``lost - gained``). Rows without the
    paired counts fall back to Newcombe's interval from the two proportions ``dense`` and ``pruned``."""

    up: str
    down: str
    dense: str
    pruned: str

    def needs(self) -> tuple[str, ...]:
        return ("n", self.up, self.down, self.pruned)

    def ready(self, s: Sums) -> bool:
        return "n" in s and ((self.up in s and self.down in s) or (self.dense in s and self.pruned in s))

    def _paired(self, s: Sums) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = _array(s["n"])
        return n, _array(s.get(self.up, np.full(np.shape(n), math.nan))), \
            _array(s.get(self.down, np.full(np.shape(n), math.nan)))

    def estimate(self, s: Sums) -> np.ndarray:
        n, b, c = self._paired(s)
        with np.errstate(invalid="ignore", divide="ignore"):
            paired = (b - c) / n
            unpaired = (_array(s.get(self.dense)) - _array(s[self.pruned])) / n if self.dense in s else paired
        return np.where(np.isfinite(b) & np.isfinite(c), paired, unpaired)

    def interval(self, s: Sums, confidence: float) -> tuple[np.ndarray, np.ndarray]:
        n, b, c = self._paired(s)
        lo, hi = tango(n, b, c, confidence)
        if self.dense in s:
            old = ~(np.isfinite(b) & np.isfinite(c))
            f_lo, f_hi = newcombe(n, s[self.dense], s[self.pruned], confidence)
            lo, hi = np.where(old, f_lo, lo), np.where(old, f_hi, hi)
        return lo, hi

    def counts(self, s: Sums) -> tuple[np.ndarray, np.ndarray, float, float]:
        n, b, c = self._paired(s)
        if not (np.isfinite(b).all() and np.isfinite(c).all()):
            raise ValueError("a cell has no paired counts (stored before they existed); it cannot be decided")
        return np.array([1.0, 0.0, -1.0]), np.stack([b, n - b - c, c], axis=-1).reshape(-1, 3), -1.0, 1.0


@dataclass(frozen=True)
class Mean:
    """The mean of an unbounded per-sample value from ``total`` and ``squares`` (loss, loss change, KL), clipped
    below at ``floor`` where the value cannot go lower (KL >= 0)."""

    total: str
    squares: str
    floor: float | None = None

    def needs(self) -> tuple[str, ...]:
        return ("n", self.total, self.squares)

    def ready(self, s: Sums) -> bool:
        return all(name in s for name in self.needs())

    def estimate(self, s: Sums) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return _array(s[self.total]) / _array(s["n"])

    def clip(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (lo, hi) if self.floor is None else (np.maximum(lo, self.floor), np.maximum(hi, self.floor))

    def interval(self, s: Sums, confidence: float) -> tuple[np.ndarray, np.ndarray]:
        return self.clip(*t_interval(s["n"], s[self.total], s[self.squares], confidence))

    def margin(self, s: Sums, alpha: float, planned: float) -> np.ndarray:
        """The asymptotic sequence's half-width at the cell's ``n`` (two-sided at ``alpha``)."""
        n, mean = _array(s["n"]), self.estimate(s)
        sd = np.sqrt(np.maximum(_array(s[self.squares]) / n - mean * mean, 0.0))
        return asymptotic_margin(n, sd, alpha, planned)


Quantity = Proportion | PairedDifference | Mean


def sequence(q: Quantity, s: Sums, confidence: float, planned: float) -> tuple[np.ndarray, np.ndarray]:
    """An interval valid at every look at once (report it for a cell that stopped early)."""
    s = columns(s)
    if isinstance(q, Mean):
        mean, half = q.estimate(s), q.margin(s, 1 - confidence, planned)
        return q.clip(mean - half, mean + half)
    values, counts, lo, hi = q.counts(s)
    return betting_sequence(values, counts, lo, hi, confidence)


def decide(q: Quantity, s: Sums, tolerance: float, confidence: float, planned: float,
           min_n: int = MIN_N_MEAN) -> np.ndarray:
    """Per cell: is the quantity (a drop) within ``tolerance``? ``within``, ``beyond`` or ``open``, valid however
    often one looks: over all looks, a wrong settled answer has probability at most ``1 - confidence``.

    ``within`` is exactly "the two-sided sequence's upper end is within the tolerance" and ``beyond`` "its lower
    end is beyond it" (``sequence`` at ``confidence``), so an answer always agrees with the interval shown for the
    cell. (For a given true drop only one of the two answers can be wrong; testing each side at the full
    ``alpha`` would also be valid and settle a little sooner, but the answer could then disagree with the
    interval.) ``planned`` (the eval set's size) tunes a mean's sequence, and a mean settles only after ``min_n``
    samples (its sequence is asymptotic: skewed per-sample changes need samples to show).
    """
    s, alpha = columns(s), 1.0 - confidence
    if isinstance(q, Mean):
        mean, half = q.estimate(s), q.margin(s, alpha, planned)
        ready = s["n"] >= min_n
        return np.where(ready & (mean + half <= tolerance), "within",
                        np.where(ready & (mean - half > tolerance), "beyond", "open"))
    values, counts, lo, hi = q.counts(s)
    if tolerance >= hi:
        return np.full(len(counts), "within")
    m, bar = np.full(len(counts), float(tolerance)), math.log(2 / alpha)  # each side at alpha / 2
    within = log_wealth(values, counts, m, lo, hi, "down") >= bar  # every drop >= tolerance rejected
    beyond = log_wealth(values, counts, m, lo, hi, "up") >= bar  # every drop <= tolerance rejected
    return np.where(within, "within", np.where(beyond, "beyond", "open"))


@dataclass(frozen=True)
class ErrorBars:
    """How the uncertainty of one metric is estimated: its value and its drop from dense (positive = worse)."""

    value: Quantity
    drop: Quantity


ERROR_BARS: dict[str, ErrorBars] = {
    "accuracy": ErrorBars(Proportion("correct"), PairedDifference("lost", "gained", "dense_correct", "correct")),
    "agreement": ErrorBars(Proportion("agree"), Proportion("agree", complement=True)),
    "loss": ErrorBars(Mean("loss_sum", "loss_sq_sum"), Mean("loss_diff_sum", "loss_diff_sq_sum")),
    "kl": ErrorBars(Mean("kl_sum", "kl_sq_sum", floor=0.0), Mean("kl_sum", "kl_sq_sum", floor=0.0)),
}
"""The metrics with error bars, and so the metrics a sequential scan can decide on. The logit metrics
(``logit_cosine``, a mean, and ``logit_rel_l2``, a ratio of sums) have none: their sums hold no variance."""


SUM_NAMES = tuple(dict.fromkeys(name for bars in ERROR_BARS.values() for q in (bars.value, bars.drop)
                                for name in q.needs()))
"""Every sum an error bar reads."""


def error_bars(metric: str) -> ErrorBars:
    """The error bars of ``metric``; a ``ValueError`` names the metrics that have them."""
    if metric not in ERROR_BARS:
        raise ValueError(f"{metric} has no error bars (its sums hold no variance); choose one of "
                         f"{', '.join(ERROR_BARS)}")
    return ERROR_BARS[metric]


def cell_intervals(s: Sums, metric: str, confidence: float = 0.95, anytime: object = False,
                   planned: float | None = None) -> dict[str, np.ndarray]:
    """``{metric}_lo``, ``{metric}_hi``, ``{metric}_drop_lo``, ``{metric}_drop_hi`` of cells from their sums.

    ``anytime`` (per cell, or one flag) marks cells that stopped early in a sequential scan: those get the
    confidence sequence instead (valid under optional stopping), tuned for ``planned`` samples. NaN where a
    cell lacks the sums (rows stored before they existed, a sum of squares for a mean).
    """
    s, bars, out = columns(s), error_bars(metric), {}
    size = len(s["n"])
    early = np.broadcast_to(np.asarray(anytime, dtype=bool), (size,))
    for part, q in (("", bars.value), ("_drop", bars.drop)):
        lo, hi = np.full(size, math.nan), np.full(size, math.nan)
        if q.ready(s):
            lo, hi = (np.array(a, dtype=float) for a in q.interval(s, confidence))
            if early.any():
                s_lo, s_hi = sequence(q, {k: v[early] for k, v in s.items()}, confidence, planned or 1.0)
                lo[early], hi[early] = s_lo, s_hi
        out[f"{metric}{part}_lo"], out[f"{metric}{part}_hi"] = lo, hi
    return out


__all__ = ["DECISIONS", "ERROR_BARS", "MIN_N_MEAN", "SUM_NAMES", "ErrorBars", "Mean", "PairedDifference", "Proportion",
           "betting_sequence", "cell_intervals", "check_confidence", "decide", "error_bars", "newcombe", "sequence",
           "t_interval", "tango", "wilson", "z_value"]
