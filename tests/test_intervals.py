"""Error bars and sequential decisions (``core.intervals``): exact sums, reference values, coverage by simulation,
the sequential rule's error rate and savings, old rows.

Every simulation is seeded. The coverage tests draw 1,000 synthetic cells each (n, rates and drop drawn per cell
over realistic ranges) and require 93-97% coverage at nominal 95%.
"""

from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from analysis.core import intervals as iv
from analysis.core.metrics import ERROR_SUMS, Sums, sums_per_variant
from analysis.core.profile import SensitivityProfile
from analysis.sensitivity.config import ScanConfig
from analysis.store.runs import RunStore
from analysis.store.scanning import scan_into_store
from analysis.workload.workload import load_workload

CELLS = 1000
N_EVAL, SHARD = 5000, 250  # the sequential simulations: a 5,000-sample eval set in 20 shards
ACCURACY, AGREEMENT = iv.ERROR_BARS["accuracy"].drop, iv.ERROR_BARS["agreement"].drop


def log_uniform(rng: np.random.Generator, lo: float, hi: float, size: int = CELLS) -> np.ndarray:
    return np.exp(rng.uniform(math.log(lo), math.log(hi), size))


# ------------------------------------------------------------------------------------------------ the sums


def test_new_sums_are_the_per_sample_quantities_and_add_up_over_shards() -> None:
    torch.manual_seed(0)
    dense = torch.randn(300, 5)
    logits = torch.stack([dense, dense + 0.8 * torch.randn(300, 5), dense + 2.0 * torch.randn(300, 5)])
    labels = torch.randint(0, 5, (300,))
    whole = sums_per_variant(logits, dense, labels)
    parts = [sums_per_variant(logits[:, a:b], dense[a:b], labels[a:b]) for a, b in ((0, 97), (97, 250), (250, 300))]
    for v in range(3):
        summed = parts[0][v] + parts[1][v] + parts[2][v]
        for name in ("n", "correct", "agree", "lost", "gained"):
            assert getattr(summed, name) == getattr(whole[v], name)
        for name in ("loss_sum", "kl_sum", "loss_sq_sum", "loss_diff_sum", "loss_diff_sq_sum", "kl_sq_sum"):
            assert getattr(summed, name) == pytest.approx(getattr(whole[v], name), rel=1e-12)
    right, dense_right = logits.argmax(-1) == labels, dense.argmax(-1) == labels
    ce = torch.nn.functional.cross_entropy(logits[2].double(), labels, reduction="none")
    ce0 = torch.nn.functional.cross_entropy(dense.double(), labels, reduction="none")
    assert whole[2].lost == int((dense_right & ~right[2]).sum())
    assert whole[2].gained == int((~dense_right & right[2]).sum())
    assert whole[2].lost - whole[2].gained == int(dense_right.sum()) - whole[2].correct  # paired = unpaired drop
    assert whole[2].loss_sq_sum == pytest.approx(float((ce ** 2).sum()), rel=1e-6)
    assert whole[2].loss_diff_sq_sum == pytest.approx(float(((ce - ce0) ** 2).sum()), rel=1e-6)
    assert whole[0].loss_diff_sum == 0.0 and whole[0].kl_sq_sum == 0.0 and whole[0].lost == whole[0].gained == 0


def test_unlabelled_sums_have_no_paired_counts() -> None:
    dense = torch.randn(40, 3)
    sums = sums_per_variant((dense + torch.randn(40, 3)).unsqueeze(0), dense, None)[0]
    assert sums.lost == sums.gained == 0 and sums.agree < 40 and sums.loss_diff_sum > 0


def test_old_rows_read_the_new_sums_as_not_recorded_and_still_open(tmp_path) -> None:
    old = Sums.from_dict({"n": 100, "correct": 80, "agree": 95, "loss_sum": 60.0, "kl_sum": 3.0, "labelled": True})
    assert all(getattr(old, name) is None for name in ERROR_SUMS)
    assert (old + Sums(n=5)).lost is None and (old + Sums(n=5)).n == 105
    table = pd.DataFrame({"layer": ["a", "a"], "type": ["Linear"] * 2, "sparsity": [0.0, 0.5], "params": [10, 10],
                          "accuracy": [0.9, 0.8], "loss": [0.3, 0.6], "agreement": [1.0, 0.85], "kl": [0.0, 0.1],
                          "n": [100, 100], "correct": [90, 80], "agree": [100, 85], "loss_sum": [30.0, 60.0],
                          "kl_sum": [0.0, 10.0]})
    SensitivityProfile(table, {"baseline": {"accuracy": 0.9, "loss": 0.3, "agreement": 1.0, "kl": 0.0},
                               "samples": 100}).save(tmp_path)
    profile = SensitivityProfile.load(tmp_path)
    cell = profile.drop("accuracy").iloc[1]
    lo, hi = iv.newcombe(100, 90, 80)
    assert (cell["drop_lo"], cell["drop_hi"]) == pytest.approx((float(lo), float(hi)))  # unpaired fallback
    assert profile.drop("agreement").iloc[1][["drop_lo", "drop_hi"]].notna().all()
    assert profile.drop("loss")[["drop_lo", "drop_hi"]].isna().all().all()  # no sums of squares: no interval


# ------------------------------------------------------------------------------------- reference values


def test_wilson_reference_values() -> None:
    z = stats.norm.ppf(0.975)
    assert np.array(iv.wilson(0, 50)) == pytest.approx((0.0, z * z / (50 + z * z)))
    assert np.array(iv.wilson(5, 10)) == pytest.approx((0.2365931, 0.7634069), abs=1e-6)
    assert float(iv.wilson(10, 10)[1]) == 1.0


def test_tango_is_the_inverted_mcnemar_score_test() -> None:
    z = stats.norm.ppf(0.975)
    n, b, c = np.array([200, 200, 500, 1000, 300]), np.array([12, 9, 0, 40, 7]), np.array([3, 3, 6, 25, 7])
    lo, hi = iv.tango(n, b, c)
    mcnemar = np.abs(b - c) / np.sqrt(b + c)
    assert list((lo > 0) | (hi < 0)) == list(mcnemar > z)
    flipped = iv.tango(1000, 25, 40)  # swapping b and c mirrors the interval
    assert np.array(flipped) == pytest.approx((-hi[3], -lo[3]))
    grid = np.linspace(-0.2, 0.2, 40001)  # the interval is exactly the deltas the score test accepts
    accepted = grid[np.abs(iv.tango_statistic(grid, 1000.0, 40.0, 25.0)) <= z]
    assert (accepted.min(), accepted.max()) == pytest.approx((lo[3], hi[3]), abs=2e-5)


def test_tango_edge_cases_and_a_regression_value() -> None:
    assert np.array(iv.tango(100, 0, 0)) == pytest.approx((-0.0369935, 0.0369935), abs=1e-6)  # no discordance
    assert float(iv.tango(10, 10, 0)[1]) == pytest.approx(1.0) and float(iv.tango(10, 0, 10)[0]) == pytest.approx(-1.0)
    # Cavo et al. 2012 paired table (b = 6, c = 16, n = 161; Fagerland et al.'s chapter-8 example): pinned against
    # regressions (the formula of the R package contingencytables).
    assert np.array(iv.tango(161, 6, 16)) == pytest.approx((-0.1240234, -0.0054334), abs=1e-6)


def test_the_unpaired_fallback_is_wider_than_the_paired_interval() -> None:
    rng = np.random.default_rng(3)
    n = rng.integers(200, 3000, 200)
    lost, gained = rng.binomial(n, 0.05), rng.binomial(n, 0.01)
    dense = rng.binomial(n - lost - gained, 0.85) + lost
    t_lo, t_hi = iv.tango(n, lost, gained)
    n_lo, n_hi = iv.newcombe(n, dense, dense - lost + gained)
    assert ((n_hi - n_lo) >= (t_hi - t_lo)).all()


def test_t_interval_from_sums_is_the_per_sample_one() -> None:
    x = np.random.default_rng(1).gamma(0.5, 1.0, 800) - 0.2
    lo, hi = iv.t_interval(len(x), x.sum(), (x * x).sum())
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    assert (float(lo), float(hi)) == pytest.approx((x.mean() - half, x.mean() + half), rel=1e-9)


# ------------------------------------------------------------------------------------------ coverage


def covered(truth: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]) -> float:
    lo, hi = bounds
    return float(np.mean((lo <= truth) & (truth <= hi)))


def test_coverage_of_the_accuracy_drop() -> None:
    rng = np.random.default_rng(11)
    n, gained, drop = log_uniform(rng, 200, 5000).astype(int), log_uniform(rng, 0.002, 0.05), rng.uniform(0, 0.3, CELLS)
    counts = np.array([rng.multinomial(k, [g + d, g, 1 - 2 * g - d]) for k, g, d in zip(n, gained, drop)])
    assert 0.93 <= covered(drop, iv.tango(n, counts[:, 0], counts[:, 1])) <= 0.97


@pytest.mark.parametrize("low, high, seed", [(0.001, 0.5, 12), (0.3, 0.99, 13)])  # disagreement; accuracy
def test_coverage_of_a_proportion(low: float, high: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, p = log_uniform(rng, 200, 5000).astype(int), log_uniform(rng, low, high)
    assert 0.93 <= covered(p, iv.wilson(rng.binomial(n, p), n)) <= 0.97


def draw_means(rng: np.random.Generator, skewed: bool) -> tuple[np.ndarray, tuple]:
    """Per-sample loss changes (mean ``drop`` plus gamma noise of skewness 2 to 6) or KL values (gamma, n >= 500)."""
    truths, sums = [], []
    for _ in range(CELLS):
        if skewed:
            n, drop, sd, shape = int(log_uniform(rng, 200, 5000, 1)[0]), rng.uniform(0, 0.5), rng.uniform(0.05, 1.0), \
                rng.uniform(0.1, 1.0)
            x = drop + sd * (rng.gamma(shape, 1.0, n) - shape) / math.sqrt(shape)
        else:
            n, drop, shape = int(log_uniform(rng, 500, 5000, 1)[0]), float(log_uniform(rng, 0.001, 0.5, 1)[0]), \
                rng.uniform(0.3, 2.0)
            x = rng.gamma(shape, drop / shape, n)
        truths.append(drop)
        sums.append((n, x.sum(), (x * x).sum()))
    return np.array(truths), tuple(np.array(col) for col in zip(*sums))


@pytest.mark.parametrize("skewed, seed", [(True, 14), (False, 15)])
def test_coverage_of_a_mean(skewed: bool, seed: int) -> None:
    truth, (n, total, squares) = draw_means(np.random.default_rng(seed), skewed)
    assert 0.93 <= covered(truth, iv.t_interval(n, total, squares)) <= 0.97


def test_the_schedule_band_covers_a_sum_of_correlated_drops() -> None:
    """Five layers measured on the same samples, which flip together: adding the per-layer half-widths (the
    predictor's band) keeps its coverage; adding them in quadrature (independence) does not."""
    rng = np.random.default_rng(25)
    n, true = 1000, np.array([0.01, 0.02, 0.0, 0.03, 0.015])
    hits = quad = 0
    for _ in range(CELLS):
        u, hard = rng.random(n), rng.random(n) < 0.3
        lost = [u < np.where(hard, 0.1 + d, d) for d in true]
        gained = [(u >= np.where(hard, 0.1 + d, d)) & (u < np.where(hard, 0.2 + d, d)) for d in true]
        lo, hi = iv.tango(n, np.array([x.sum() for x in lost]), np.array([x.sum() for x in gained]))
        est = np.array([(a.sum() - b.sum()) / n for a, b in zip(lost, gained)])
        hits += lo.sum() <= true.sum() <= hi.sum()
        half = np.sqrt(((est - lo) ** 2).sum()), np.sqrt(((hi - est) ** 2).sum())
        quad += est.sum() - half[0] <= true.sum() <= est.sum() + half[1]
    assert hits / CELLS >= 0.93 and quad < hits


# ----------------------------------------------------------------------------------- sequential decisions


def paired_shards(rng: np.random.Generator, drops: np.ndarray, gained: float = 0.01) -> np.ndarray:
    """(cells, shards, 2): lost and gained counts per shard of synthetic accuracy cells."""
    probs = np.stack([gained + drops, np.full_like(drops, gained), 1 - 2 * gained - drops], axis=-1)
    return np.array([[rng.multinomial(SHARD, p)[:2] for _ in range(N_EVAL // SHARD)] for p in probs])


def disagreement_shards(rng: np.random.Generator, drops: np.ndarray) -> np.ndarray:
    """(cells, shards, 2): disagreements and 0 per shard of synthetic agreement cells."""
    return np.stack([rng.binomial(SHARD, np.repeat(drops[:, None], N_EVAL // SHARD, 1)), np.zeros(
        (len(drops), N_EVAL // SHARD), dtype=int)], axis=-1)


def sums_of(metric: str, counts: np.ndarray, n: np.ndarray) -> dict[str, np.ndarray]:
    if metric == "accuracy":
        return {"n": n, "lost": counts[:, 0], "gained": counts[:, 1]}
    return {"n": n, "agree": n - counts[:, 0]}


def run_sequential(metric: str, shards: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every cell fed its shards until it settles: (decisions, samples used, stopped early)."""
    test = ACCURACY if metric == "accuracy" else AGREEMENT
    cells = len(shards)
    decision, used, totals = np.full(cells, "open", dtype=object), np.zeros(cells), np.zeros((cells, 2))
    for k in range(shards.shape[1]):
        open_ = decision == "open"
        totals[open_] += shards[open_, k]
        used[open_] += SHARD
        if k + 1 < shards.shape[1] and open_.any():
            decision[open_] = iv.decide(test, sums_of(metric, totals[open_], used[open_]), tolerance, 0.95, N_EVAL)
    early = decision != "open"
    point = test.estimate(sums_of(metric, totals, used))
    decision[~early] = np.where(point[~early] <= tolerance + 1e-12, "within", "beyond")
    return decision, used, early


@pytest.mark.parametrize("metric", ["accuracy", "agreement"])
def test_sequential_wrong_decisions_stay_below_alpha_and_whole_set_cells_are_exact(metric: str) -> None:
    """Cells spread around the tolerance (a third within a point of it): wrong settled answers stay below 5%; a
    cell that used the whole set answers as the full data does; the worst case, cells just past the tolerance,
    is wrongly called within at most 5% of the time; and sampling stops early on most cells."""
    rng = np.random.default_rng(21)
    tol = 0.02
    drops = np.where(np.arange(CELLS) % 3 == 0, rng.uniform(0.01, 0.03, CELLS), rng.uniform(0.0, 0.3, CELLS))
    shards = (paired_shards if metric == "accuracy" else disagreement_shards)(rng, drops)
    decision, used, early = run_sequential(metric, shards, tol)
    truth = np.where(drops <= tol, "within", "beyond")
    full = (ACCURACY if metric == "accuracy" else AGREEMENT).estimate(
        sums_of(metric, shards.sum(axis=1), np.full(CELLS, N_EVAL)))
    assert np.mean(early & (decision != truth)) < 0.05
    assert (decision[~early] == np.where(full[~early] <= tol + 1e-12, "within", "beyond")).all()
    assert np.mean(early & (decision != np.where(full <= tol + 1e-12, "within", "beyond"))) < 0.02
    assert early.mean() > 0.5 and used.sum() < 0.6 * CELLS * N_EVAL
    boundary = paired_shards if metric == "accuracy" else disagreement_shards
    decision, _, early = run_sequential(metric, boundary(rng, np.full(CELLS, tol + 1e-4)), tol)
    assert np.mean(early & (decision == "within")) <= 0.05


def test_far_cells_settle_on_a_small_fraction_of_the_set() -> None:
    rng = np.random.default_rng(22)
    drops = np.repeat([0.0, 0.002, 0.1, 0.5], 200)
    decision, used, early = run_sequential("agreement", disagreement_shards(rng, drops), 0.02)
    assert early.all() and (decision == np.where(drops <= 0.02, "within", "beyond")).all()
    assert used.mean() / N_EVAL < 0.15


def test_an_answer_agrees_with_the_interval_shown() -> None:
    rng = np.random.default_rng(5)
    n = rng.integers(100, 3000, 300)
    lost, gained = rng.binomial(n, rng.uniform(0.0, 0.1, 300)), rng.binomial(n, 0.01)
    sums = {"n": n, "lost": lost, "gained": gained}
    decision = iv.decide(ACCURACY, sums, 0.02, 0.95, 3000)
    lo, hi = iv.sequence(ACCURACY, sums, 0.95, 3000)
    assert ((decision == "within") == (hi <= 0.02 + 1e-9)).all()
    assert ((decision == "beyond") == (lo > 0.02 - 1e-9)).all()
    est = ACCURACY.estimate(sums)
    assert ((lo < est) & (est < hi)).all()  # the point estimate is inside: its answer is the decision's
    assert (decision != "open").any() and (decision == "open").any()


@pytest.mark.parametrize("metric", ["accuracy", "agreement"])
def test_the_confidence_sequence_covers_at_every_look_at_once(metric: str) -> None:
    rng = np.random.default_rng(24)
    drops = rng.uniform(0.0, 0.2, 300)
    shards = (paired_shards if metric == "accuracy" else disagreement_shards)(rng, drops)
    missed = np.zeros(len(drops), dtype=bool)
    test = ACCURACY if metric == "accuracy" else AGREEMENT
    for k in range(1, shards.shape[1] + 1):
        lo, hi = iv.sequence(test, sums_of(metric, shards[:, :k].sum(axis=1), np.full(len(drops), k * SHARD)),
                             0.95, N_EVAL)
        missed |= (drops < lo) | (drops > hi)
    assert missed.mean() <= 0.05


def test_a_sequential_loss_drop_settles_only_after_enough_samples() -> None:
    """The loss sequence is asymptotic: skewed per-sample changes; half the cells just past the tolerance."""
    rng = np.random.default_rng(23)
    tol, wrong, used = 0.05, 0, []
    test = iv.ERROR_BARS["loss"].drop
    for i in range(400):
        drop, shape = (tol + 1e-4, 0.1) if i % 2 else (rng.choice([0.0, 0.3]), 1.0)
        x = drop + 0.3 * (rng.gamma(shape, 1.0, N_EVAL) - shape) / math.sqrt(shape)
        for k in range(SHARD, N_EVAL, SHARD):
            head = x[:k]
            found = iv.decide(test, {"n": k, "loss_diff_sum": head.sum(), "loss_diff_sq_sum": (head ** 2).sum()},
                              tol, 0.95, N_EVAL)[0]
            if found != "open":
                assert k >= iv.MIN_N_MEAN
                wrong += found != ("within" if drop <= tol else "beyond")
                break
        if i % 2 == 0:
            used.append(k / N_EVAL)
    assert wrong / 400 < 0.05 and np.mean(used) <= 0.3


def test_a_run_stored_before_the_error_bar_sums_still_opens(tmp_path) -> None:
    """A run whose stored rows lack the error-bar sums (written before they existed) opens from the store with the
    same numbers, the unpaired accuracy interval and no loss interval; a run with them gets the paired one."""
    store = RunStore(tmp_path / "runs.sqlite")
    workload = load_workload("sample:digits-mlp", "sample:digits", count=120)
    run_id = scan_into_store(store, workload, ScanConfig(sparsities=(0.5, 0.9), layers=("fc1",))).run_id
    new = store.profile(run_id)
    conn = sqlite3.connect(store.path)  # strip the new sums, as an engine before them stored its rows
    for rowid, text in conn.execute("SELECT rowid, result FROM layers").fetchall():
        result = json.loads(text)
        result["rows"] = [{k: v for k, v in row.items() if k not in ERROR_SUMS} for row in result["rows"]]
        conn.execute("UPDATE layers SET result = ? WHERE rowid = ?", (json.dumps(result), rowid))
    conn.commit()
    conn.close()
    old = store.profile(run_id)
    pd.testing.assert_frame_equal(old.table[["layer", "sparsity", "n", "accuracy", "loss", "agreement"]],
                                  new.table[["layer", "sparsity", "n", "accuracy", "loss", "agreement"]])
    cell, fresh = old.drop("accuracy").iloc[-1], new.drop("accuracy").iloc[-1]
    lo, hi = iv.newcombe(120, round(120 * old.baseline("accuracy")), int(cell["correct"]))
    assert (cell["drop_lo"], cell["drop_hi"]) == pytest.approx((float(lo), float(hi)))
    assert (fresh["drop_lo"], fresh["drop_hi"]) != pytest.approx((float(lo), float(hi)))
    assert old.drop("loss")["drop_lo"].iloc[1:].isna().all() and new.drop("loss")["drop_lo"].notna().all()
