"""The Ray backend on a real local Ray cluster, run inside a private network namespace with only loopback.

Ray binds to the machine's network address even when told to use 127.0.0.1, so the cases in
``ray_cases.py`` run in a child pytest under ``unshare -n``. If the namespace cannot be made, this test
fails: it never starts Ray on the machine's network.
"""

import subprocess
import sys

from conftest import ROOT, cli_env


def test_ray_cases_in_a_loopback_only_namespace():
    inner = f"ip link set lo up && exec {sys.executable} -m pytest -q -x -p no:cacheprovider tests/ray_cases.py"
    done = subprocess.run(["unshare", "-n", "sh", "-c", inner], cwd=ROOT, env=cli_env(), capture_output=True,
                          text=True, timeout=540)
    assert done.returncode == 0, f"ray cases failed (rc {done.returncode}):\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]
