"""Backends without Ray: backend validation, shard arithmetic, combining shard results, the local backend."""

import subprocess
import sys

import pytest
from conftest import ROOT, cli_env, run_cli

from analysis.sensitivity.backends import Backend, cluster_backend, configured_address, data_shards
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import LayerResult, combine_shards, prepare
from analysis.sensitivity.driver import run_scan, scan
from analysis.sensitivity.engines import ENGINES


@pytest.mark.parametrize("n,batch,workers", [(449, 128, 2), (449, 64, 3), (32, 16, 8), (100, 128, 4), (1000, 7, 5)])
def test_data_shards_tile_the_set_on_batch_boundaries(n, batch, workers):
    shards = data_shards(n, batch, workers)
    assert shards[0][0] == 0 and shards[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(shards, shards[1:]))
    assert all(lo % batch == 0 and hi > lo for lo, hi in shards)
    assert len(shards) == min(workers, -(-n // batch))
    sizes = [-(-(hi - lo) // batch) for lo, hi in shards]
    assert max(sizes) - min(sizes) <= 1


def test_combined_shards_equal_the_whole_set(workloads):
    w = workloads["digits-cnn"]
    ctx = prepare(w, ScanConfig(sparsities=(0.3, 0.8), batch_size=64))
    run = ENGINES["naive"]
    for layer in ctx.layers[:2]:
        whole = run(ctx, layer, None)
        parts = [run(ctx, layer, span) for span in data_shards(len(ctx.x), 64, 3)]
        combined = combine_shards(parts[::-1])
        assert combined.layer == layer.name and combined.shard == (0, len(ctx.x))
        assert len(combined.rows) == len(whole.rows)
        for got, want in zip(combined.rows, whole.rows):
            assert got.keys() == want.keys()
            for key, value in want.items():
                if isinstance(value, float) and key not in ("sparsity", "actual_sparsity"):
                    assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
                else:
                    assert got[key] == value, key
        # Combining does not change its inputs.
        assert parts[0].rows[0]["n"] == parts[0].shard[1] - parts[0].shard[0]


def _part(layer, lo, hi, sparsities=(0.0, 0.5)):
    rows = [{"sparsity": s, "actual_sparsity": s, "n": hi - lo, "correct": 1, "agree": 1, "loss_sum": 0.5,
             "kl_sum": 0.1, "labelled": True} for s in sparsities]
    return LayerResult(layer, (lo, hi), rows, 1.0)


@pytest.mark.parametrize("parts,match", [
    ([], "no shard results"),
    ([_part("a", 0, 10), _part("b", 10, 20)], "layers 'a' and 'b'"),
    ([_part("a", 0, 10), _part("a", 12, 20)], "gap or an overlap"),
    ([_part("a", 0, 10), _part("a", 5, 20)], "gap or an overlap"),
    ([_part("a", 0, 10), _part("a", 10, 20, (0.0, 0.9))], "other sparsities"),
])
def test_combine_shards_rejects_what_does_not_add_up(parts, match):
    with pytest.raises(ValueError, match=match):
        combine_shards(parts)


@pytest.mark.parametrize("backend,match", [
    (Backend("spark"), "unknown backend 'spark'"),
    (Backend("local", workers=2), "only apply to the ray backend"),
    (Backend("ray", address="not an address"), "bad Ray address 'not an address'"),
    (Backend("ray", workers=0), "positive integer, got 0"),
    (Backend("ray", split="rows"), "unknown split 'rows'"),
])
def test_bad_backends(backend, match):
    with pytest.raises(ValueError, match=match):
        backend.validated()


def test_good_addresses_pass():
    for address in ("auto", "10.0.0.5:6379", "head.example.org:6379", "ray://head:10001"):
        assert Backend("ray", address=address).validated().address == address


def test_local_backend_is_the_plain_scan_and_needs_no_ray(workloads):
    w = workloads["digits-mlp"]
    config = ScanConfig(sparsities=(0.5,))
    finished = []
    profile = run_scan(w, config, "local", on_result=finished.append)
    assert profile.meta["backend"] == {"kind": "local"}
    assert profile.table["correct"].tolist() == scan(w, config).table["correct"].tolist()
    assert [r.layer for r in finished] == profile.layers
    code = ("import sys; from analysis.sensitivity.driver import run_scan; from analysis.workload.workload import load_workload; "
            "from analysis.sensitivity.config import ScanConfig; import analysis.cli; "
            "run_scan(load_workload('sample:digits-mlp', 'sample:digits'), ScanConfig(sparsities=(0.5,)));"
            "assert 'ray' not in sys.modules, 'the local backend imported ray'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("args,match", [
    (["--workers", "2"], "only apply to the ray backend"),
    (["--backend", "ray", "--workers", "0"], "positive integer, got 0"),
    (["--backend", "ray", "--address", "nowhere"], "bad Ray address 'nowhere'"),
])
def test_cli_rejects_bad_backend_options(tmp_path, args, match):
    done = run_cli("scan", "--model", "sample:digits-mlp", "--data", "sample:digits", "--out", tmp_path / "o", *args)
    assert done.returncode == 2
    assert done.stderr.startswith("prunescope: error:") and match in done.stderr and "Traceback" not in done.stderr


def test_the_configured_cluster_is_what_the_dashboard_offers():
    assert configured_address({}) is None and cluster_backend(environ={}) is None
    assert configured_address({"RAY_ADDRESS": "10.0.0.5:6379"}) == "10.0.0.5:6379"
    env = {"PRUNESCOPE_RAY_ADDRESS": " head:6379 ", "RAY_ADDRESS": "10.0.0.5:6379"}
    backend = cluster_backend(workers=4, environ=env)
    assert backend == Backend("ray", address="head:6379", workers=4)
    with pytest.raises(ValueError, match="bad Ray address 'head'"):
        cluster_backend(environ={"RAY_ADDRESS": "head"})
