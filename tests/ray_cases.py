"""Ray backend cases against a real local Ray cluster. Not collected on its own: ``test_ray_backend.py``
runs this file in a private network namespace that has only loopback, so Ray binds to nothing else.

One cluster (2 CPUs, no dashboard, a small object store) serves every case in this module.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pandas as pd
import pytest
import ray
from conftest import run_cli

from analysis.core.batchnorm import recalibrate
from analysis.core.profile import SensitivityProfile
from analysis.sensitivity.backends import Backend
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import prepare
from analysis.sensitivity.driver import run_scan
from analysis.workload.workload import load_workload

COUNTS = ["layer", "sparsity", "actual_sparsity", "n", "correct", "agree", "lost", "gained"]
SUMS = ("loss_sum", "kl_sum", "loss", "kl", "logit_cosine", "logit_rel_l2", "loss_sq_sum", "loss_diff_sum",
        "loss_diff_sq_sum", "kl_sq_sum", "accuracy_drop_lo", "accuracy_drop_hi", "loss_drop_lo", "loss_drop_hi")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    names = [name for _, name in socket.if_nameindex()]
    assert names == ["lo"], f"refusing to start Ray: this network namespace has interfaces {names}, not only lo"
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024, logging_level="warning")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def assert_same_profile(got: SensitivityProfile, want: SensitivityProfile) -> None:
    """Counts equal (the paired ones too); loss and KL sums, their sums of squares and the intervals drawn from them
    within 1e-9 relative (sums of shards are added in another order)."""
    assert got.meta["complete"] and want.meta["complete"]
    pd.testing.assert_frame_equal(got.table[COUNTS], want.table[COUNTS])
    for col in SUMS:
        pd.testing.assert_series_equal(got.table[col], want.table[col], rtol=1e-9, atol=1e-12)
    assert got.meta["baseline"] == want.meta["baseline"]


@pytest.mark.parametrize("name,config,split", [
    ("digits-cnn", ScanConfig(sparsities=(0.5, 0.9), criterion="taylor", granularity="channel", batch_size=64), "data"),
    ("digits-resnet", ScanConfig(sparsities=(0.3, 0.7), batch_size=128, bn_recalibrate=True, bn_batches=2), "data"),
    ("digits-mlp", ScanConfig(sparsities=(0.5, 0.9), criterion="activation", batch_size=64), "layer"),
])
def test_samples_equal_the_local_scan(workloads, name, config, split):
    w = workloads[name]
    streamed = []
    cluster = run_scan(w, config, Backend("ray", workers=2, split=split), on_result=streamed.append)
    assert cluster.meta["backend"]["workers"] == 2 and cluster.meta["backend"]["restarts"] == 0
    assert sorted(r.layer for r in streamed) == sorted(cluster.layers)
    assert all(r.shard == (0, len(w.data)) for r in streamed)
    assert_same_profile(cluster, run_scan(w, config, "local"))


def test_torchvision_model_equals_the_local_scan():
    w = load_workload("torchvision:resnet18", "random:3x32x32", count=32)
    recalibrate(w.model, w.data.x)
    config = ScanConfig(sparsities=(0.5, 0.9), batch_size=16)
    cluster = run_scan(w, config, Backend("ray", workers=2))
    assert cluster.meta["backend"]["shards"] == [[0, 16], [16, 32]]
    assert len(cluster.layers) == 21
    assert_same_profile(cluster, run_scan(w, config, "local"))


def _worker_pids() -> list[int]:
    """Pids of this driver's ScanWorker actors that are running a task (descendants of this process, named
    by Ray's process title)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if not Path(f"/proc/{entry}/cmdline").read_bytes().startswith(b"ray::ScanWorker.run"):
                continue
            pid = int(entry)
            while pid > 1 and pid != os.getpid():
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        if pid == os.getpid():
            found.append(int(entry))
    return found


def test_a_killed_worker_is_retried_and_the_table_is_the_same(workloads):
    w = workloads["digits-resnet"]
    config = ScanConfig(sparsities=(0.5, 0.9), batch_size=128)
    killed = []

    def kill_one(result) -> None:  # noqa: ANN001
        if not killed:
            pids = _worker_pids()
            assert pids, "no busy worker to kill"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    streamed = []
    cluster = run_scan(w, config, Backend("ray", workers=2), on_result=lambda r: (streamed.append(r), kill_one(r)))
    assert killed and cluster.meta["backend"]["restarts"] >= 1
    assert sorted(r.layer for r in streamed) == sorted(cluster.layers)
    assert_same_profile(cluster, run_scan(w, config, "local"))


def test_cli_joins_a_running_cluster(cluster, tmp_path):
    done = run_cli("scan", "--model", "sample:digits-mlp", "--data", "sample:digits", "--sparsities", "0.5,0.9",
                   "--backend", "ray", "--address", cluster, "--workers", "2", "--out", tmp_path / "ray")
    assert done.returncode == 0, done.stderr
    assert "ray: 2 workers, data split, 0 worker restarts" in done.stdout
    saved = SensitivityProfile.load(tmp_path / "ray")
    assert saved.meta["backend"]["address"] == cluster
    local = run_scan(load_workload("sample:digits-mlp", "sample:digits"), ScanConfig(sparsities=(0.5, 0.9)), "local")
    assert_same_profile(saved, SensitivityProfile(local.table.astype(saved.table.dtypes.to_dict()), local.meta))


def test_too_many_workers_is_a_clear_error(workloads):
    with pytest.raises(ValueError, match="3 workers were asked for, but the Ray cluster has only 2 CPUs"):
        run_scan(workloads["digits-mlp"], ScanConfig(sparsities=(0.5,)), Backend("ray", workers=3))


def test_a_stopped_cluster_scan_resumes_from_its_finished_layers(workloads):
    w = workloads["digits-cnn"]
    config = ScanConfig(sparsities=(0.5,), batch_size=128)
    finished = []
    partial = run_scan(w, config, Backend("ray", workers=2), on_result=finished.append,
                       should_stop=lambda: len(finished) >= 1)
    assert not partial.meta["complete"] and len(finished) >= 1 and len(partial.layers) == len(finished)
    ctx = prepare(w, config)
    resumed = run_scan(w, config, Backend("ray", workers=2), done={r.layer: r for r in finished}, context=ctx)
    assert resumed.meta["resumed_layers"] == len(finished)
    assert_same_profile(resumed, run_scan(w, config, "local", context=ctx))
