"""Two dashboard sessions and a CLI scan on one run store and one cached model at the same time."""

from __future__ import annotations

import threading

import torch
from conftest import run_cli

from analysis.schedule.measure import measure_schedule
from analysis.schedule.schedule import Schedule
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.driver import scan
from analysis.workload.workload import load_workload
from ui import runs, scanning
from ui.common import WorkloadSpec, cached_workload, model_lock

SPEC = WorkloadSpec()
COLUMNS = ["layer", "sparsity", "accuracy", "loss", "agreement", "kl"]


def _in_threads(*jobs) -> list:  # noqa: ANN002
    """Run each job in its own thread, all at once; their results in order (an exception fails the test)."""
    results, errors = [None] * len(jobs), []
    start = threading.Barrier(len(jobs))

    def work(i: int) -> None:
        start.wait()
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_sessions_sharing_a_cached_model_get_the_numbers_of_a_lone_scan(prunescope_home):
    """Scans prune the shared model in place: under the model's lock, concurrent scans and a measurement each see
    the dense weights, and the model is bit-exact afterwards."""
    workload = cached_workload(SPEC)
    dense = {k: v.clone() for k, v in workload.model.state_dict().items()}
    configs = [ScanConfig(criterion="magnitude", sparsities=(0.5, 0.9), engine="naive"),
               ScanConfig(criterion="random", sparsities=(0.5, 0.9), engine="naive")]
    schedule = Schedule({"block2.0": 0.7, "fc": 0.5})
    lock, store = model_lock(SPEC), runs.store()

    def measure() -> dict:
        with lock:
            return measure_schedule(workload, schedule).to_dict()

    first, second, measured = _in_threads(lambda: scanning.scan_into_store(store, workload, configs[0], lock),
                                          lambda: scanning.scan_into_store(store, workload, configs[1], lock),
                                          measure)

    fresh = load_workload("sample:digits-cnn", "sample:digits")
    for (run_id, reopened), config in zip((first, second), configs):
        assert not reopened
        lone = scan(fresh, config)
        assert runs.load_run(run_id).table[COLUMNS].equals(lone.table[COLUMNS])
    assert measured == measure_schedule(fresh, schedule).to_dict()
    for name, tensor in workload.model.state_dict().items():
        assert torch.equal(tensor, dense[name]), f"{name} changed: a scan's pruning leaked into the shared model"


def test_a_cli_scan_and_a_dashboard_scan_write_the_store_at_once(prunescope_home, tmp_path):
    """The dashboard's shared store and a CLI process write at the same time (WAL, busy timeout); both runs land."""
    workload = cached_workload(SPEC)
    config = ScanConfig(sparsities=(0.3, 0.6), engine="naive")

    def cli() -> int:
        return run_cli("scan", "--model", "sample:digits-cnn", "--data", "sample:digits", "--criterion", "l1",
                       "--granularity", "channel", "--sparsities", "0.5", "--out", tmp_path / "cli", "--quiet")

    done, (run_id, _) = _in_threads(cli, lambda: scanning.scan_into_store(runs.store(), workload, config,
                                                                          model_lock(SPEC)))
    assert done.returncode == 0, done.stderr
    listed = {r.run_id: r for r in runs.list_runs(SPEC)}
    assert len(listed) == 2 and all(r.complete and r.layers_done == 4 for r in listed.values())
    assert {r.criterion for r in listed.values()} == {"l1", "magnitude"}
    assert listed[run_id].criterion == "magnitude"
