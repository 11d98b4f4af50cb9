"""The prunescope command, through a subprocess: the scan contract and one-line errors for bad input."""

import json
import re

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


FAILS_LATE = '''
import os
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(64, 16), nn.Linear(16, 16), nn.Linear(16, 10)

    def forward(self, x):
        if (self.c.weight == 0).any() and os.environ.get("FAIL") == "error":
            raise RuntimeError("c cannot be pruned")
        if (self.c.weight == 0).any() and os.environ.get("FAIL") == "interrupt":
            raise KeyboardInterrupt
        return self.c(torch.relu(self.b(torch.relu(self.a(x.flatten(1))))))


def build():
    return Net()
'''


@pytest.mark.parametrize("fail, code, match", [
    ("error", 2, r"^prunescope: error: .*net.py:build failed on a batch of the data \(net.py, line \d+, in forward\): "
                 r"RuntimeError: c cannot be pruned; the 2 finished layers are kept in the run store: run the same "
                 r"command again to resume$"),
    ("interrupt", 130, r"^prunescope: interrupted; the 2 finished layers are kept in the run store: run the same "
                       r"command again to resume$"),
])
def test_a_scan_that_stops_on_the_model_keeps_its_finished_layers(fail, code, match, tmp_path):
    (tmp_path / "net.py").write_text(FAILS_LATE)
    args = ("scan", "--model", f"{tmp_path / 'net.py'}:build", "--data", "sample:digits", "--count", "64",
            "--sparsities", "0.5", "--engine", "naive", "--quiet", "--trust-code", "--out", tmp_path / "o")
    res = run_cli(*args, FAIL=fail)
    assert res.returncode == code, res.stderr
    assert re.match(match, res.stderr.strip()) and res.stderr.count("\n") == 1, res.stderr
    again = run_cli(*args, FAIL="none")
    assert again.returncode == 0, again.stderr
    assert "2 of 3 layers already done" in again.stderr
    assert list(pd.read_csv(tmp_path / "o" / "sensitivity.csv")["layer"].unique()) == ["a", "b", "c"]


def test_a_failure_in_prunescope_itself_keeps_its_traceback(monkeypatch, tmp_path):
    from analysis import cli
    from analysis.core import metrics

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(metrics, "dense_pass", broken)
    monkeypatch.setattr("analysis.sensitivity.context.dense_pass", broken)
    with pytest.raises(RuntimeError, match="a bug of ours"):
        cli.main(["scan", "--model", "sample:digits-mlp", "--data", "sample:digits", "--count", "8",
                  "--sparsities", "0.5", "--quiet", "--no-store", "--out", str(tmp_path / "o")])


# ------------------------------------------------------------------------------ artifacts in the run store

MLP = ("--model", "sample:digits-mlp", "--data", "sample:digits", "--count", "64")


def _artifacts(kind: str) -> pd.DataFrame:
    from analysis.store.runs import RunStore

    with RunStore() as store:
        return store.artifacts(kind=kind)


def _stored_id(r, kind: str) -> int:
    """The artifact id a command printed, the only one of its kind in the store."""
    line = [l for l in r.stderr.splitlines() if l.startswith("stored as artifact ")]
    assert len(line) == 1, r.stderr
    artifact_id = int(line[0].split()[3])
    assert _artifacts(kind)["id"].tolist() == [artifact_id]
    return artifact_id


def _get(artifact_id: int, out):  # noqa: ANN001, ANN202
    r = run_cli("runs", "get", artifact_id, "--out", out)
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text())


def test_schedule_diagnose_and_export_are_stored_like_the_dashboards(tmp_path, prunescope_home):
    from analysis.schedule.schedule import Schedule
    from analysis.store import artifacts
    from analysis.workload.workload import load_workload

    w = load_workload("sample:digits-mlp", "sample:digits", count=64)
    workload = artifacts.workload_id(w.fingerprint(), w.data.fingerprint())
    scan = tmp_path / "scan"
    assert run_cli("scan", *MLP, "--sparsities", "0.5,0.8", "--out", scan, "--quiet").returncode == 0
    run_id = json.loads((scan / "scan.json").read_text())["run_id"]

    r = run_cli("schedule", "--scan", scan, "--target-sparsity", "0.5", "--out", tmp_path / "half.json")
    assert r.returncode == 0, r.stderr
    sid = _stored_id(r, "schedule")
    written, got = Schedule.load(tmp_path / "half.json"), _get(sid, tmp_path / "got.json")
    reopened = Schedule.from_dict(got)  # how the Schedule page reopens a saved schedule
    assert reopened.sparsities == written.sparsities and reopened.sparsities
    assert Schedule.load(tmp_path / "got.json").sparsities == written.sparsities
    assert got["meta"]["name"] == "half" and got["meta"]["run_id"] == run_id
    assert artifacts.workload_of(got) == workload  # the dashboard lists it with the workload's runs
    assert _artifacts("schedule")["run_id"].tolist() == [run_id]
    r = run_cli("schedule", "--scan", scan, "--target-sparsity", "0.3", "--out", tmp_path / "other" / "half.json")
    assert r.returncode == 0 and "replacing the older schedule 'half'" in r.stderr, r.stderr
    assert _artifacts("schedule")["id"].tolist() == [_stored_id(r, "schedule")]  # one schedule of a name, as the page
    r = run_cli("schedule", "--scan", scan, "--target-sparsity", "0.5", "--out", tmp_path / "half.json", "--quiet")
    assert r.returncode == 0, r.stderr

    diag = tmp_path / "diag"
    r = run_cli("diagnose", *MLP, "--layer", "fc1,fc2", "--sparsity", "0.5", "--out", diag)
    assert r.returncode == 0, r.stderr
    payload = _get(_stored_id(r, "diagnostics"), tmp_path / "diag.json")
    assert payload["summary"] == json.loads((diag / "diagnose.json").read_text())
    assert payload["cell"] == ["fc1", 0.5, "magnitude", "unstructured"] and artifacts.workload_of(payload) == workload
    _, reopened = artifacts.diagnosis_from(payload)  # how the Diagnostics page reopens a stored diagnosis
    for table, file in (("shift", "activation_shift.csv"), ("dead", "dead_neurons.csv")):
        assert getattr(reopened, table).to_csv(index=False) == (diag / file).read_text()

    onnx = tmp_path / "m.onnx"
    r = run_cli("export", "--model", "sample:digits-mlp", "--count", "64", "--schedule", tmp_path / "half.json",
                "--exporter", "torchscript", "--no-latency", "--verify-samples", "32", "--json", "--out", onnx)
    assert r.returncode == 0, r.stderr
    payload = _get(_stored_id(r, "export"), tmp_path / "export.json")
    assert payload["report"] == json.loads(r.stdout) and payload["report"]["onnx_path"] == str(onnx)
    assert Schedule.from_dict(payload["schedule"]).sparsities == Schedule.load(tmp_path / "m.schedule.json").sparsities
    assert artifacts.export_from(payload).onnx_path.is_file() and artifacts.workload_of(payload) == workload
    assert _artifacts("export")["run_id"].tolist() == [run_id]  # through the schedule's scan folder
    listing = run_cli("runs", "artifacts", "--kind", "export")
    assert listing.returncode == 0, listing.stderr
    rows = listing.stdout.splitlines()[1:]
    assert len(rows) == 1 and "half.json (masked)" in rows[0] and f" {run_id} " in rows[0]


def test_no_store_leaves_the_store_alone_and_a_bad_store_keeps_the_files(tmp_path, prunescope_home):
    scan = tmp_path / "scan"
    assert run_cli("scan", *MLP, "--sparsities", "0.5", "--out", scan, "--quiet", "--no-store").returncode == 0
    r = run_cli("schedule", "--scan", scan, "--target-sparsity", "0.4", "--out", tmp_path / "s.json", "--no-store")
    assert r.returncode == 0 and "stored as" not in r.stderr, r.stderr
    r = run_cli("diagnose", *MLP, "--layer", "fc1", "--sparsity", "0.5", "--out", tmp_path / "d", "--no-store")
    assert r.returncode == 0 and (tmp_path / "d" / "diagnose.json").is_file(), r.stderr
    r = run_cli("export", "--model", "sample:digits-mlp", "--count", "64", "--schedule", tmp_path / "s.json",
                "--exporter", "torchscript", "--no-latency", "--verify-samples", "32", "--out", tmp_path / "m.onnx",
                "--no-store")
    assert r.returncode == 0 and (tmp_path / "m.onnx").is_file(), r.stderr
    assert not (prunescope_home / "runs.sqlite").exists()

    r = run_cli("schedule", "--scan", scan, "--target-sparsity", "0.4", "--out", tmp_path / "t.yaml", "--name", "t 1")
    assert r.returncode == 0, r.stderr
    stored = _artifacts("schedule")
    assert stored["name"].tolist() == ["t 1"] and stored["run_id"].isna().all()  # the scan was not stored

    (prunescope_home / "runs.sqlite").unlink()
    (prunescope_home / "runs.sqlite").write_bytes(b"not a database, " * 8)
    r = run_cli("schedule", "--scan", scan, "--target-sparsity", "0.4", "--out", tmp_path / "u.json", "--quiet")
    assert r.returncode == 2 and r.stderr.startswith("prunescope: error: ") and len(r.stderr.splitlines()) == 1
    assert "not a Prunescope run store" in r.stderr and (tmp_path / "u.json").is_file()
    assert (prunescope_home / "runs.sqlite").read_bytes() == b"not a database, " * 8
