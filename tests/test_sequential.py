"""Sequential scans on the samples: cells that use the whole set are the full grid's, settled cells answer as the
full data does, the bisection finds the full grid's answer with fewer sample-evaluations, runs are stored under
their own identity and resume, and the CLI's flags, files and side-by-side comparison."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.core.profile import EARLY, SensitivityProfile, tolerance_table
from analysis.sensitivity import adaptive
from analysis.sensitivity.config import ScanConfig, search_grid
from analysis.sensitivity.driver import scan
from analysis.store.runs import RunStore, identity_key, scan_identity
from tests.conftest import run_cli
from tests.resuming import stop_and_resume

GRID = tuple(round(0.1 * i, 1) for i in range(1, 10))
COUNTS = ["n", "correct", "agree", "lost", "gained"]
TOL = 0.02


@pytest.fixture(scope="module")
def cnn():
    from analysis.workload.workload import load_workload

    return load_workload("sample:digits-cnn", "sample:digits")


@pytest.fixture(scope="module")
def full(cnn):
    return scan(cnn, ScanConfig(sparsities=GRID))


def _cells(profile: SensitivityProfile) -> pd.DataFrame:
    return profile.drop().set_index(["layer", "sparsity"])


@pytest.mark.parametrize("engine", ["fast", "naive"])
def test_whole_set_cells_are_the_full_grids_and_settled_cells_answer_as_the_full_data(cnn, full, engine):
    found = scan(cnn, ScanConfig(sparsities=GRID, adaptive="sequential", tolerance=TOL, shard_size=64, engine=engine))
    got, want = _cells(found), _cells(full)
    assert list(got.index) == list(want.index)
    whole, early = got[~got[EARLY]], got[got[EARLY]]
    pd.testing.assert_frame_equal(whole[COUNTS], want.loc[whole.index, COUNTS])
    assert whole["loss_sum"].to_numpy() == pytest.approx(want.loc[whole.index, "loss_sum"].to_numpy(), rel=1e-6)
    assert len(early) >= 10 and (early["n"] < 449).all() and (early["n"] % 64 == 0).all()
    assert ((early["drop"] <= TOL) == (want.loc[early.index, "drop"] <= TOL)).all()
    assert ((early["drop_hi"] <= TOL) | (early["drop_lo"] > TOL)).all()  # settled: the interval says which side
    answers = tolerance_table(found, TOL).set_index("layer")
    assert answers["max_sparsity"].to_dict() == tolerance_table(full, TOL).set_index("layer")["max_sparsity"].to_dict()
    spent = adaptive.sample_evaluations(found)
    assert spent["settled_early"] == len(early) and spent["full_grid"] == 4 * 9 * 449
    used = int(got.loc[got.index.get_level_values(1) > 0, "n"].sum())
    assert spent["sample_evaluations"] == used < spent["full_grid"]
    assert found.meta["adaptive"] == {"mode": "sequential", "tolerance": TOL, "adaptive_metric": "accuracy",
                                      "shard_size": 64, "confidence": 0.95}


def test_sequential_bisection_finds_the_full_grids_answer_with_fewer_samples(cnn):
    found = scan(cnn, ScanConfig(adaptive="sequential-bisect", tolerance=TOL, resolution=0.05, shard_size=64))
    fine = scan(cnn, ScanConfig(sparsities=search_grid(0.05)))
    table = adaptive.bisect_table(found).set_index("layer")
    drops = fine.drop()
    for layer, row in table.iterrows():
        fails = (drops[drops["layer"] == layer].sort_values("sparsity")["drop"] > TOL).tolist()
        if fails == sorted(fails):  # monotone: the search must find the grid's answer
            assert row["max_sparsity"] == tolerance_table(fine, TOL).set_index("layer").loc[layer, "max_sparsity"]
        assert row["max_sparsity_lo"] <= row["max_sparsity"] <= row["max_sparsity_hi"]
    assert table["sample_evaluations"].sum() < 0.8 * table["evaluations"].sum() * 449  # less than bisection alone
    assert table["sample_evaluations"].sum() < 0.25 * adaptive.sample_evaluations(fine)["sample_evaluations"]


def test_recalibrated_sequential_cells_recalibrate_on_the_full_scans_batches(cnn):
    config = dict(sparsities=(0.3, 0.6), bn_recalibrate=True, bn_batches=2, batch_size=64)
    want = _cells(scan(cnn, ScanConfig(**config)))
    got = _cells(scan(cnn, ScanConfig(**config, adaptive="sequential", tolerance=0.5, shard_size=128)))
    whole = got[~got[EARLY]]
    assert len(whole) >= 4
    pd.testing.assert_frame_equal(whole[COUNTS], want.loc[whole.index, COUNTS])


def test_label_free_sequential_scan_on_random_inputs():
    from analysis.workload.workload import load_workload

    wl = load_workload("sample:digits-mlp", "random:1x8x8", count=600)
    profile = scan(wl, ScanConfig(sparsities=(0.2, 0.9), adaptive="sequential", shard_size=100))
    assert profile.meta["adaptive"]["adaptive_metric"] == "agreement"
    assert profile.table["accuracy"].isna().all() and profile.table["agreement_drop_hi"].notna().all()
    assert profile.table[EARLY].any()


def test_sequential_runs_are_their_own_identity_and_resume(cnn, tmp_path):
    base = ScanConfig(sparsities=(0.3, 0.6), adaptive="sequential", tolerance=TOL, shard_size=64)
    keys = {identity_key(scan_identity(cnn, c)) for c in (
        base, ScanConfig(sparsities=(0.3, 0.6)), ScanConfig(sparsities=(0.3, 0.6), adaptive="sequential", tolerance=TOL,
                                                             shard_size=64, confidence=0.9),
        ScanConfig(sparsities=(0.3, 0.6), adaptive="sequential", tolerance=TOL, shard_size=32))}
    assert len(keys) == 4
    # The level of a full scan's intervals does not change its numbers, so not its identity (nor earlier runs').
    assert scan_identity(cnn, ScanConfig(confidence=0.8)) == scan_identity(cnn, ScanConfig())
    assert not {"confidence", "shard_size"} & set(scan_identity(cnn, ScanConfig(adaptive="bisect")))
    reference = scan(cnn, base)
    with RunStore(tmp_path / "runs.sqlite") as store:
        run_id, _ = stop_and_resume(store, cnn, base, stop_after=2)
        pd.testing.assert_frame_equal(store.profile(run_id).table, reference.table)


def test_a_view_at_another_confidence_recomputes_the_intervals(full):
    wide, narrow = full.with_confidence(0.99).drop(), full.with_confidence(0.8).drop()
    pruned = wide["sparsity"] > 0
    assert (wide.loc[pruned, "drop_hi"] > narrow.loc[pruned, "drop_hi"]).all()
    assert (wide["drop"] == narrow["drop"]).all() and full.with_confidence(0.99).confidence == 0.99
    with pytest.raises(ValueError, match="confidence 1.5 is outside"):
        full.with_confidence(1.5)


def test_cli_sequential_scan_files_and_the_side_by_side_comparison(tmp_path):
    common = ["--model", "sample:digits-mlp", "--data", "sample:digits", "--sparsities", "0.3,0.6,0.9"]
    done = run_cli("scan", *common, "--out", tmp_path / "full", "--no-store")
    assert done.returncode == 0, done.stderr
    done = run_cli("scan", *common, "--adaptive", "sequential", "--shard-size", "64", "--tolerance", "0.02",
                   "--confidence", "0.9", "--out", tmp_path / "seq", "--no-store")
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "seq" / "sensitivity.csv")
    assert {EARLY, "accuracy_lo", "accuracy_hi", "accuracy_drop_lo", "loss_drop_hi", "lost"} <= set(table.columns)
    settled = int(table[EARLY].sum())
    assert settled > 0 and f"{settled} of 9 cells settled early" in done.stdout and "at 90% confidence" in done.stdout
    ranked = pd.read_csv(tmp_path / "seq" / "tolerance.csv")
    profile = SensitivityProfile.load(tmp_path / "seq")
    assert profile.confidence == 0.9
    assert ranked["max_sparsity_lo"].tolist() == tolerance_table(profile, 0.02)["max_sparsity_lo"].tolist()
    compared = run_cli("compare", "--scan", tmp_path / "full", "--scan", tmp_path / "seq", "--out", tmp_path / "c.csv")
    assert compared.returncode == 0, compared.stderr
    side = pd.read_csv(tmp_path / "c.csv")
    assert list(side["layer"]) == ["fc1", "fc2", "fc3"] or set(side["layer"]) == {"fc1", "fc2", "fc3"}
    assert side["sample_evaluations"].sum() == int(table.loc[table["sparsity"] > 0, "n"].sum())
    assert f"within the bounds for {int(side['inside'].sum())} of 3 layers" in compared.stdout


@pytest.mark.parametrize("args,message", [
    (["--shard-size", "64"], "--shard-size applies to --adaptive sequential or sequential-bisect only"),
    (["--adaptive", "sequential", "--shard-size", "0"], "shard size must be a positive integer"),
    (["--confidence", "1.5"], "confidence 1.5 is outside (0, 1)"),
    (["--adaptive", "sequential", "--metric", "logit_cosine"],
     "adaptive metric 'logit_cosine' cannot drive a sequential scan"),
    (["--adaptive", "sequential-bisect", "--sparsities", "0.5"], "--sparsities does not apply to --adaptive "
                                                                  "sequential-bisect"),
    (["--adaptive", "sequential", "--backend", "ray"], "an adaptive scan (sequential) decides on the whole eval set"),
])
def test_cli_refuses_bad_sequential_options_with_one_line(tmp_path, capsys, args, message):
    from analysis.cli import main

    code = main(["scan", "--model", "sample:digits-mlp", "--data", "sample:digits", "--count", "20", *args,
                 "--out", str(tmp_path / "bad"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and f"prunescope: error: {message}" in err, err
    assert not (tmp_path / "bad").exists()
