"""The run store: resumable scans, artifacts, concurrent writers, and refusing damaged or foreign files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import prepare
from analysis.sensitivity.driver import scan
from analysis.store import runs as store_runs
from analysis.store.runs import RunStore, StoreError, default_path, identity_key, scan_identity
from analysis.store.scanning import scan_into_store
from analysis.store.writer import LayerWriter
from tests.conftest import ROOT, cli_env, run_cli

CONFIG = ScanConfig(sparsities=(0.5, 0.9), batch_size=256)


@pytest.fixture()
def store(tmp_path: Path) -> RunStore:
    with RunStore(tmp_path / "runs.sqlite") as s:
        yield s


def test_layer_writer_leaves_at_most_one_finished_layer_uncommitted(store: RunStore, workloads) -> None:
    """The writer commits off the scan's path, but handing over a layer waits for the previous commit: whenever
    the scan runs, every layer but the last one handed over is already in the file (seen by another connection)."""
    wl = workloads["digits-mlp"]
    ctx = prepare(wl, CONFIG)
    run = store.open_scan(wl, ctx)
    committed_at_handover = []

    def committed() -> set[str]:
        with RunStore(store.path) as other:
            return set(other.done(run.id))

    with LayerWriter(store, run.id, ctx.config) as writer:
        def sink(result) -> None:  # noqa: ANN001
            writer(result)
            committed_at_handover.append((result.layer, committed()))

        profile = scan(wl, CONFIG, on_result=sink, context=ctx)
        writer.finish(profile.meta)
    names = [l.name for l in ctx.layers]
    for i, (layer, seen) in enumerate(committed_at_handover):
        assert layer == names[i] and set(names[:i]) <= seen
    assert set(committed()) == set(names) and store.run(run.id)["status"] == "complete"
    pd.testing.assert_frame_equal(store.profile(run.id).table, profile.table)


def test_layer_writer_raises_the_writers_error(store: RunStore, workloads) -> None:
    wl = workloads["digits-mlp"]
    ctx = prepare(wl, CONFIG)
    run = store.open_scan(wl, ctx)
    results = []
    scan(wl, CONFIG, on_result=results.append, context=ctx)
    store.delete_run(run.id)
    with LayerWriter(store, run.id, ctx.config) as writer:
        writer(results[0])
        with pytest.raises(StoreError, match="refused a write .*run deleted"):
            writer(results[1])
        writer(results[1])
        with pytest.raises(StoreError, match="refused a write .*run deleted"):
            writer.close()


def test_layer_writer_started_before_prepare_resumes_and_refuses_a_foreign_store(tmp_path: Path, workloads) -> None:
    """``start`` opens the store and finds the run before the scan is prepared; ``attach`` resumes it."""
    wl = workloads["digits-mlp"]
    path = tmp_path / "runs.sqlite"
    with LayerWriter.start(wl, CONFIG, path=path) as writer:
        ctx = prepare(wl, CONFIG)
        assert writer.attach(wl, ctx) is None
        handed = []
        scan(wl, CONFIG, on_result=lambda r: (writer(r), handed.append(r)), should_stop=lambda: len(handed) >= 1,
             context=ctx)
        first = writer.run_id
    with LayerWriter.start(wl, CONFIG, path=path) as writer:
        resumed = writer.attach(wl, prepare(wl, CONFIG))
        assert resumed.id == first == writer.run_id and list(resumed.done) == [ctx.layers[0].name]
    foreign = tmp_path / "notes.sqlite"
    foreign.write_text("my notes")
    with pytest.raises(StoreError, match="not an SQLite database"):
        with LayerWriter.start(wl, CONFIG, path=foreign) as writer:
            writer.attach(wl, prepare(wl, CONFIG))
    assert foreign.read_text() == "my notes"


def test_default_path_is_under_prunescope_home(prunescope_home: Path) -> None:
    assert default_path() == prunescope_home / "runs.sqlite"
    with RunStore() as s:
        assert s.path.is_file() and s.path.parent == prunescope_home


def test_scan_resumes_from_committed_layers_and_equals_uninterrupted(store: RunStore, workloads) -> None:
    wl = workloads["digits-mlp"]
    reference = scan(wl, CONFIG)
    ctx = prepare(wl, CONFIG)
    run = store.open_scan(wl, ctx)
    assert not run.resumed and run.done == {}
    stop_after = {"n": 0}

    def sink(result) -> None:  # noqa: ANN001
        store.add_layer(run.id, result, ctx.config)
        stop_after["n"] += 1

    partial = scan(wl, CONFIG, on_result=sink, should_stop=lambda: stop_after["n"] >= 1, context=ctx)
    assert not partial.meta["complete"]
    again = store.open_scan(wl, prepare(wl, CONFIG))
    assert again.resumed and again.id == run.id and list(again.done) == [ctx.layers[0].name]
    computed = []
    resumed = scan(wl, CONFIG, done=again.done, on_result=lambda r: computed.append(r.layer))
    assert computed == [l.name for l in ctx.layers[1:]]
    assert resumed.meta["resumed_layers"] == 1
    pd.testing.assert_frame_equal(resumed.table, reference.table)


def test_engine_device_and_batch_size_are_not_part_of_the_identity(workloads) -> None:
    wl = workloads["digits-mlp"]
    key = identity_key(scan_identity(wl, CONFIG))
    assert identity_key(scan_identity(wl, replace(CONFIG, batch_size=7, engine="naive", device="cpu"))) == key
    for change in ({"criterion": "l2"}, {"granularity": "channel"}, {"sparsities": (0.5,)}, {"seed": 3},
                   {"layers": ("fc1",)}, {"bn_recalibrate": True}):
        assert identity_key(scan_identity(wl, replace(CONFIG, **change))) != key, change
    other_model = identity_key(scan_identity(workloads["digits-cnn"], CONFIG))
    assert other_model != key


def test_fresh_starts_a_new_run_and_profile_is_rebuilt_from_the_store(store: RunStore, workloads) -> None:
    wl = workloads["digits-mlp"]
    ctx = prepare(wl, CONFIG)
    first = store.open_scan(wl, ctx)
    profile = scan(wl, CONFIG, on_result=lambda r: store.add_layer(first.id, r, ctx.config), context=ctx)
    store.finish(first.id, profile.meta)
    second = store.open_scan(wl, ctx, fresh=True)
    assert second.id != first.id and not second.resumed
    runs = store.runs()
    assert list(runs["id"]) == [second.id, first.id]
    assert list(runs["status"]) == ["running", "complete"]
    assert list(runs["layers_done"]) == [0, len(ctx.layers)]
    rebuilt = store.profile(first.id)
    cols = ["layer", "sparsity", "accuracy", "loss", "agreement", "kl", "n", "correct"]
    pd.testing.assert_frame_equal(rebuilt.table[cols], profile.table[cols])
    assert rebuilt.meta["baseline"] == profile.meta["baseline"]
    store.delete_run(first.id)
    assert list(store.runs()["id"]) == [second.id]
    assert store.conn.execute("SELECT COUNT(*) FROM layers WHERE run_id = ?", (first.id,)).fetchone()[0] == 0
    with pytest.raises(StoreError, match=f"no run {first.id}"):
        store.run(first.id)


def test_artifacts_round_trip_list_and_delete(store: RunStore, workloads) -> None:
    wl = workloads["digits-mlp"]
    run = store.open_scan(wl, prepare(wl, CONFIG))
    schedule = {"criterion": "magnitude", "granularity": "unstructured", "sparsities": {"fc1": 0.5}}
    sid = store.save_artifact("schedule", "half.json", schedule, run_id=run.id)
    eid = store.save_artifact("export", "model.onnx", b"\x08\x00binary")
    did = store.save_artifact("diagnostics", "fc1@0.5", [{"layer": "fc1", "cosine": 0.99}], run_id=run.id)
    listing = store.artifacts()
    assert list(listing["id"]) == [did, eid, sid]
    assert list(store.artifacts(kind="schedule")["name"]) == ["half.json"]
    assert set(store.artifacts(run_id=run.id)["id"]) == {sid, did}
    info, payload = store.get_artifact(sid)
    assert payload == schedule and info["kind"] == "schedule" and info["run_id"] == run.id
    assert store.get_artifact(eid)[1] == b"\x08\x00binary"
    store.delete_run(run.id)
    assert set(store.artifacts()["id"]) == {eid}, "a deleted run takes its artifacts with it"
    store.delete_artifact(eid)
    with pytest.raises(StoreError, match=f"no artifact {eid}"):
        store.get_artifact(eid)
    with pytest.raises(StoreError, match="JSON data or bytes"):
        store.save_artifact("schedule", "bad", object())
    with pytest.raises(StoreError, match="non-empty kind"):
        store.save_artifact("", "x", {})
    with pytest.raises(StoreError, match="no run 999"):
        store.save_artifact("schedule", "x", {}, run_id=999)


def _unchanged_after_refusal(path: Path, match: str) -> None:
    before = path.read_bytes()
    with pytest.raises(StoreError, match=match):
        RunStore(path)
    assert path.read_bytes() == before
    assert not Path(str(path) + "-wal").exists()


def test_foreign_text_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    path.write_text("my notes, not a database\n")
    _unchanged_after_refusal(path, "not an SQLite database")


def test_other_programs_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE contacts (name TEXT)")
    conn.execute("INSERT INTO contacts VALUES ('ada')")
    conn.commit()
    conn.close()
    _unchanged_after_refusal(path, "another program .*contacts")


def test_damaged_store_is_refused_and_left_alone(tmp_path: Path, workloads) -> None:
    path = tmp_path / "runs.sqlite"
    with RunStore(path) as s:
        wl = workloads["digits-mlp"]
        ctx = prepare(wl, CONFIG)
        run = s.open_scan(wl, ctx)
        for layer in ctx.layers:
            s.save_artifact("blob", layer.name, b"x" * 20000, run_id=run.id)
        s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    data[2 * page: 3 * page] = b"\xff" * page
    path.write_bytes(bytes(data))
    _unchanged_after_refusal(path, "damaged")
    path.write_bytes(bytes(data[: page + 100]))
    _unchanged_after_refusal(path, "damaged")


def test_damage_deep_in_the_file_is_a_store_error_and_runs_check_finds_it(tmp_path: Path) -> None:
    """Opening only checks what does not grow with the store; damage it does not read surfaces when a query
    reaches it, as a ``StoreError`` (one CLI line), and ``runs check`` reads the whole file."""
    home = tmp_path / "home"
    home.mkdir()
    path = home / "runs.sqlite"
    with RunStore(path) as s:
        for i in range(6):
            s.save_artifact("blob", f"b{i}", bytes([i]) * 200_000)
        s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert s.check() == []
    clean = run_cli("runs", "check", PRUNESCOPE_HOME=str(home))
    assert clean.returncode == 0 and "no damage found" in clean.stdout
    data = bytearray(path.read_bytes())
    page = 4096
    middle = len(data) // page // 2 * page
    data[middle: middle + page] = b"\xff" * page
    path.write_bytes(bytes(data))
    with RunStore(path) as s:
        with pytest.raises(StoreError, match="is damaged .*runs check"):
            s.artifacts()
        assert s.check() != []
    res = run_cli("runs", "check", PRUNESCOPE_HOME=str(home))
    assert res.returncode == 2 and res.stderr.startswith("prunescope: error:") and res.stderr.count("\n") == 1
    assert "is damaged" in res.stderr


def test_cli_reports_a_foreign_store_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "runs.sqlite").write_text("not a store")
    res = run_cli("runs", "list", PRUNESCOPE_HOME=str(home))
    assert res.returncode == 2
    assert res.stderr.startswith("prunescope: error:") and res.stderr.count("\n") == 1
    assert "not an SQLite database" in res.stderr
    assert (home / "runs.sqlite").read_text() == "not a store"


WRITER = """
import sys
from analysis.sensitivity.context import LayerResult
from analysis.store.runs import RunStore
path, who, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with RunStore(path) as s:
    for i in range(n):
        s.save_artifact("test", f"w{who}-{i}", {"who": who, "i": i})
        s.add_layer(1, LayerResult(f"w{who}-layer{i}", (0, 1), [{"sparsity": 0.0}], 0.0))
"""


def test_concurrent_writers_from_several_processes_lose_nothing(store: RunStore, workloads) -> None:
    wl = workloads["digits-mlp"]
    run = store.open_scan(wl, prepare(wl, CONFIG))
    assert run.id == 1
    n, writers = 40, 2
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(store.path), str(w), str(n)], cwd=ROOT,
                              env=cli_env(), stderr=subprocess.PIPE, text=True) for w in range(writers)]
    for i in range(n):
        store.save_artifact("test", f"main-{i}", {"i": i})
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert len(store.artifacts(kind="test")) == (writers + 1) * n
    assert len(store.done(run.id)) == writers * n


def test_one_store_shared_by_threads(store: RunStore) -> None:
    """A dashboard caches one store for all its sessions: their transactions must not interleave."""
    from concurrent.futures import ThreadPoolExecutor

    def work(who: int) -> list[int]:
        ids = [store.save_artifact("thread", f"t{who}-{i}", {"i": i}) for i in range(30)]
        assert len(store.artifacts(kind="thread")) >= len(ids)
        return ids

    with ThreadPoolExecutor(4) as pool:
        ids = [i for batch in pool.map(work, range(4)) for i in batch]
    assert len(set(ids)) == 120 and len(store.artifacts(kind="thread")) == 120
    assert store.get_artifact(ids[-1])[1] == {"i": 29}


def test_a_folder_in_place_of_the_store_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "runs.sqlite").mkdir()
    with pytest.raises(StoreError, match="is a folder"):
        RunStore(tmp_path / "runs.sqlite")


SLOW_MODEL = '''
import torch
from torch import nn


def deep():
    torch.manual_seed(0)
    layers = []
    for _ in range(16):
        layers += [nn.Linear(64, 64), nn.ReLU()]
    return nn.Sequential(nn.Flatten(), *layers, nn.Linear(64, 10))
'''


@pytest.mark.slow
def test_cli_scan_killed_midway_resumes_and_equals_an_uninterrupted_scan(tmp_path: Path) -> None:
    (tmp_path / "deep.py").write_text(SLOW_MODEL)
    home = tmp_path / "home"
    args = ["scan", "--model", f"{tmp_path / 'deep.py'}:deep", "--data", "random:1x8x8", "--count", "3000",
            "--sparsities", "0.3,0.6,0.9", "--quiet", "--trust-code"]
    env = cli_env(PRUNESCOPE_HOME=str(home))
    proc = subprocess.Popen([sys.executable, "-m", "analysis", *args, "--out", str(tmp_path / "killed")], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (home / "runs.sqlite").exists():
                with RunStore(home / "runs.sqlite") as s:
                    runs = s.runs()
                done = int(runs["layers_done"].iloc[0]) if len(runs) else 0
                if done >= 1:
                    break
            time.sleep(0.02)
        assert proc.poll() is None, "the scan finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "sensitivity.csv").exists()

    with RunStore(home / "runs.sqlite") as s:
        kept = int(s.runs()["layers_done"].iloc[0])
        total = int(s.runs()["layers"].iloc[0])
    assert 1 <= kept < total
    resumed = run_cli(*args, "--out", tmp_path / "resumed", PRUNESCOPE_HOME=str(home))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming run 1: {kept} of {total} layers already done" in resumed.stderr
    meta = json.loads((tmp_path / "resumed" / "scan.json").read_text())
    assert meta["resumed_layers"] == kept and meta["complete"] and meta["run_id"] == 1
    assert set(meta["timings"]["per_layer_s"]) >= {l["name"] for l in meta["layers"]}

    from analysis.workload.workload import load_workload

    workload = load_workload(f"{tmp_path / 'deep.py'}:deep", "random:1x8x8", count=3000, trust_code=True)
    scan(workload, ScanConfig(sparsities=(0.3, 0.6, 0.9))).save(tmp_path / "plain")
    a = pd.read_csv(tmp_path / "resumed" / "sensitivity.csv")
    b = pd.read_csv(tmp_path / "plain" / "sensitivity.csv")
    pd.testing.assert_frame_equal(a, b)


def test_cli_runs_list_show_delete_get_and_fresh(tmp_path: Path, workloads) -> None:
    home = tmp_path / "home"
    home.mkdir()
    wl = workloads["digits-mlp"]
    config = ScanConfig(sparsities=(0.5,))
    with RunStore(home / "runs.sqlite") as s:
        ctx = prepare(wl, config)
        run = s.open_scan(wl, ctx)
        reference = scan(wl, config, on_result=lambda r: s.add_layer(run.id, r, ctx.config), context=ctx)
        s.finish(run.id, reference.meta)
        aid = s.save_artifact("schedule", "s.json", {"sparsities": {"fc1": 0.5}}, run_id=run.id)
    fresh = run_cli("scan", "--model", "sample:digits-mlp", "--data", "sample:digits", "--sparsities", "0.5",
                    "--fresh", "--quiet", "--out", tmp_path / "c", PRUNESCOPE_HOME=str(home))
    assert fresh.returncode == 0 and "resuming" not in fresh.stderr, fresh.stderr
    listing = run_cli("runs", "list", "--json", PRUNESCOPE_HOME=str(home))
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    assert [r["id"] for r in rows] == [2, 1] and all(r["status"] == "complete" for r in rows)
    assert all(r["layers_done"] == r["layers"] == 3 for r in rows)
    assert rows[0]["sparsities"] == 2 and rows[0]["grid"] == "0,0.5"
    table = run_cli("runs", "list", PRUNESCOPE_HOME=str(home)).stdout.splitlines()
    assert "sparsities" in table[0] and "0,0.5" in table[1]
    shown = run_cli("runs", "show", "1", "--out", tmp_path / "shown", PRUNESCOPE_HOME=str(home))
    assert shown.returncode == 0 and "3 of 3 layers done" in shown.stdout
    cols = ["layer", "sparsity", "accuracy", "loss", "agreement"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "shown" / "sensitivity.csv")[cols],
                                  pd.read_csv(tmp_path / "c" / "sensitivity.csv")[cols])
    got = run_cli("runs", "get", str(aid), "--out", tmp_path / "s.json", PRUNESCOPE_HOME=str(home))
    assert got.returncode == 0 and json.loads((tmp_path / "s.json").read_text()) == {"sparsities": {"fc1": 0.5}}
    deleted = run_cli("runs", "delete", "1", "7", PRUNESCOPE_HOME=str(home))
    assert deleted.returncode == 2 and "deleted run 1" in deleted.stdout and "no run 7" in deleted.stderr
    with RunStore(home / "runs.sqlite") as s:
        assert list(s.runs()["id"]) == [2]


ACTIVATIONS = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(64, 16), nn.Linear(16, 10), act

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x.flatten(1))))


def relu():
    torch.manual_seed(0)
    return Net(torch.relu)


def tanh():
    torch.manual_seed(0)
    return Net(torch.tanh)
'''


def test_the_same_weights_in_other_code_are_another_model(tmp_path: Path) -> None:
    from analysis.workload.workload import load_workload

    path = tmp_path / "act.py"
    path.write_text(ACTIVATIONS)
    relu, tanh = (load_workload(f"{path}:{name}", "sample:digits", count=16, trust_code=True)
                  for name in ("relu", "tanh"))
    assert torch_equal_state(relu.model, tanh.model)
    assert relu.fingerprint() != tanh.fingerprint()
    before = relu.fingerprint()
    path.write_text(ACTIVATIONS.replace("torch.relu)", "torch.sigmoid)"))  # the file edited, same factory name
    assert load_workload(f"{path}:relu", "sample:digits", count=16, trust_code=True).fingerprint() != before


def torch_equal_state(a, b) -> bool:  # noqa: ANN001
    import torch

    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_run_whose_dense_outputs_differ_is_not_resumed(tmp_path: Path) -> None:
    """Code the identity cannot see (here: a Python API workload, no file) is caught by the dense baseline."""
    import importlib.util

    from analysis.workload.data import load_data
    from analysis.workload.workload import Workload

    path = tmp_path / "act_module.py"
    path.write_text(ACTIVATIONS)
    spec = importlib.util.spec_from_file_location("act_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = load_data("sample:digits", count=64)
    relu = Workload(module.relu().eval(), data, "api", 10, (1, 8, 8))
    tanh = Workload(module.tanh().eval(), data, "api", 10, (1, 8, 8))
    assert relu.fingerprint() == tanh.fingerprint()  # same weights, same module tree, no code to hash
    with RunStore(tmp_path / "runs.sqlite") as store:
        first = store.open_scan(relu, prepare(relu, CONFIG))
        scan(relu, CONFIG, on_result=lambda r: store.add_layer(first.id, r), context=prepare(relu, CONFIG))
        ctx = prepare(tanh, CONFIG)
        second = store.open_scan(tanh, ctx)
        assert not second.resumed and second.id != first.id
        assert any("other dense outputs" in n for n in ctx.notices)
        scan(tanh, CONFIG, on_result=lambda r: store.add_layer(second.id, r), context=ctx)
        relu_ctx = prepare(relu, CONFIG)
        third = store.open_scan(relu, relu_ctx)  # the newest run of the identity is tanh's: not resumed either
        assert not third.resumed and third.id not in (first.id, second.id)
        assert len(store.done(first.id)) == len(store.done(second.id)) == 2  # both kept


def test_scan_into_store_reports_the_partial_profile_that_the_store_ends_up_holding(store: RunStore, workloads) -> None:
    wl = workloads["digits-mlp"]
    seen = []
    stored = scan_into_store(store, wl, CONFIG, progress=lambda p, partial: seen.append((p.done, partial())))
    assert [done for done, _ in seen] == list(range(1, len(stored.profile.layers) + 1))
    for done, partial in seen:  # each report holds exactly the layers finished so far, with the dense baseline
        assert partial.layers == stored.profile.layers[:done]
        assert partial.meta["baseline"] == stored.profile.meta["baseline"]
    pd.testing.assert_frame_equal(seen[-1][1].table, store.profile(stored.run_id).table)


def test_run_ids_are_never_reused_after_a_delete(store: RunStore, workloads) -> None:
    wl = workloads["digits-mlp"]
    ctx = prepare(wl, CONFIG)
    first = store.open_scan(wl, ctx)
    second = store.open_scan(wl, ctx, fresh=True)
    store.delete_run(second.id)
    third = store.open_scan(wl, ctx, fresh=True)
    assert third.id > second.id > first.id


def test_an_old_store_gains_autoincrement_and_keeps_its_runs(tmp_path: Path, workloads, monkeypatch) -> None:
    """Stores written before AUTOINCREMENT: the runs table is rebuilt on opening, runs and their layers kept."""
    wl = workloads["digits-mlp"]
    ctx = prepare(wl, CONFIG)
    path = tmp_path / "old.sqlite"
    monkeypatch.setattr(store_runs, "_SCHEMA", store_runs._SCHEMA.replace(" AUTOINCREMENT", ""))
    with RunStore(path) as s:
        assert "sqlite_sequence" not in {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master")}
        run = s.open_scan(wl, ctx)
        profile = scan(wl, CONFIG, on_result=lambda r: s.add_layer(run.id, r, ctx.config), context=ctx)
        s.finish(run.id, profile.meta)
        gone = s.open_scan(wl, ctx, fresh=True).id
    monkeypatch.undo()
    with RunStore(path) as s:
        assert "AUTOINCREMENT" in s.conn.execute("SELECT sql FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
        assert list(s.runs()["id"]) == [gone, run.id]
        pd.testing.assert_frame_equal(s.profile(run.id).table, profile.table)
        s.delete_run(gone)
        assert s.open_scan(wl, ctx, fresh=True).id > gone
        assert s.check() == []
