"""The prunescope command, through a subprocess: the scan contract and one-line errors for bad input."""

import json

import pandas as pd
import pytest
import torch

from tests.conftest import run_cli


def test_scan_writes_the_contract_files(tmp_path):
    out = tmp_path / "scan"
    r = run_cli("scan", "--model", "sample:digits-mlp", "--data", "sample:digits", "--sparsities", "0.3,0.6",
                "--out", out)
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(out / "sensitivity.csv")
    assert {"layer", "sparsity", "accuracy", "loss", "agreement"} <= set(table.columns)
    assert len(table) == 3 * 3
    assert table[["accuracy", "agreement"]].stack().between(0, 1).all()
    meta = json.loads((out / "scan.json").read_text())
    assert meta["model"] == "sample:digits-mlp" and meta["criterion"] == "magnitude"
    assert meta["baseline"]["accuracy"] == pytest.approx(table[table.sparsity == 0].accuracy.iloc[0])
    assert "fc1" in r.stdout and "max_sparsity" in r.stdout


def test_label_free_scan_leaves_accuracy_empty(tmp_path):
    out = tmp_path / "scan"
    r = run_cli("scan", "--model", "sample:digits-cnn", "--data", "random:1x8x8", "--count", "32",
                "--sparsities", "0.5", "--layers", "fc,block3.0", "--out", out)
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(out / "sensitivity.csv")
    assert table.accuracy.isna().all() and set(table.layer) == {"fc", "block3.0"}


def test_help_lists_every_option():
    r = run_cli("scan", "--help")
    for option in ("--model", "--data", "--criterion", "--granularity", "--sparsities", "--layers", "--device",
                   "--engine", "--out"):
        assert option in r.stdout


@pytest.mark.parametrize("args,match", [
    (["--model", "missing.pt", "--data", "sample:digits"], "does not exist"),
    (["--model", "sample:digits-cnn", "--data", "random:3x32x32"], "cannot run on"),
    (["--model", "sample:digits-cnn", "--data", "LABELS"], "10 classes"),
    (["--model", "sample:digits-cnn", "--data", "sample:digits", "--sparsities", "0.5,1.0"], "outside"),
    (["--model", "sample:digits-cnn", "--data", "sample:digits", "--criterion", "entropy"], "invalid choice"),
    (["--model", "sample:digits-cnn", "--data", "sample:digits", "--layers", "conv9"], "unknown layer"),
    (["--model", "sample:digits-cnn", "--data", "sample:digits", "--granularity", "rows"], "unknown granularity"),
    (["--model", "sample:digits-cnn", "--data", "sample:digits", "--device", "cuda:7"], "cuda"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, match):
    if "LABELS" in args:
        torch.save({"x": torch.rand(4, 1, 8, 8), "y": torch.tensor([0, 1, 2, 11])}, tmp_path / "l.pt")
        args = [str(tmp_path / "l.pt") if a == "LABELS" else a for a in args]
    r = run_cli("scan", *args, "--out", tmp_path / "out")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert match in r.stderr
    assert len([line for line in r.stderr.splitlines() if "error" in line]) == 1


def test_an_out_path_that_cannot_be_written_is_refused_before_any_work(tmp_path, prunescope_home):
    (tmp_path / "data.pt").write_bytes(b"x")
    (tmp_path / "folder").mkdir()
    model = ["--model", "sample:digits-mlp", "--data", "sample:digits", "--count", "32"]
    cases = [
        (["scan", *model, "--out", tmp_path / "data.pt"], "is a file; give a folder"),
        (["scan", *model, "--out", tmp_path / "data.pt" / "results"], "data.pt is a file"),
        (["diagnose", *model, "--layer", "fc1", "--sparsity", "0.5", "--out", tmp_path / "data.pt"], "is a file"),
        (["export", *model, "--schedule", tmp_path / "s.json", "--out", tmp_path / "folder"], "is a folder"),
        (["runs", "show", "1", "--out", tmp_path / "data.pt"], "is a file; give a folder"),
    ]
    for args, match in cases:
        r = run_cli(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr and match in r.stderr, (args, r.stderr)
    assert (tmp_path / "data.pt").read_bytes() == b"x"
    assert not (prunescope_home / "runs.sqlite").exists()  # refused before the scan opened the store


def test_compare_criteria_from_two_scans(tmp_path):
    for criterion in ("magnitude", "random"):
        r = run_cli("scan", "--model", "sample:digits-mlp", "--data", "sample:digits", "--sparsities", "0.5,0.8",
                    "--criterion", criterion, "--quiet", "--out", tmp_path / criterion)
        assert r.returncode == 0, r.stderr
    r = run_cli("compare", "--scan", tmp_path / "magnitude", "--scan", tmp_path / "random",
                "--out", tmp_path / "cmp.csv", "--plot", tmp_path / "cmp.html")
    assert r.returncode == 0, r.stderr
    cmp = pd.read_csv(tmp_path / "cmp.csv")
    assert {"layer", "sparsity", "magnitude", "random", "best", "spread"} <= set(cmp.columns)
    assert len(cmp) == 3 * 3
    # At 80% sparsity magnitude pruning must beat the random control on every layer of a trained model.
    high = cmp[cmp.sparsity == 0.8]
    assert (high["magnitude"] < high["random"]).all() and (high["best"] == "magnitude").all()
    assert (tmp_path / "cmp.html").stat().st_size > 1000
    bad = run_cli("compare", "--scan", tmp_path / "magnitude")
    assert bad.returncode == 2 and "at least two" in bad.stderr
