"""The HTML report (analysis/report.py), ``prunescope report`` and ``prunescope dashboard``."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from app_support import sample_profile, sample_scan  # noqa: F401
from conftest import cli_env, run_cli

from analysis.cli import main
from analysis.cli.folders import load_export
from analysis.deploy.export import export
from analysis.report.html import build_report
from analysis.schedule.predict import Predictor
from analysis.schedule.schedule import Schedule

SCHEDULE = {"block2.0": 0.5, "block3.0": 0.7, "fc": 0.3}


def _figures(html: str) -> int:
    return html.count('class="plotly-graph-div"')


@pytest.fixture(scope="module")
def exported(workloads, tmp_path_factory):  # noqa: ANN001, ANN201
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    return export(workloads["digits-cnn"].model, Schedule(SCHEDULE), workloads["digits-cnn"].data, out,
                  exporter="torchscript", repeats=3)


def test_a_profile_alone_gives_the_sensitivity_section(sample_profile):  # noqa: F811
    html = build_report(sample_profile)
    assert re.findall(r"<h2>(\w+)</h2>", html) == ["Sensitivity"]
    assert _figures(html) == 2
    assert len(re.findall(r"plotly.js v\d", html)) == 1 and 'src="https://cdn.plot.ly' not in html
    for layer in sample_profile.layers:
        assert f"<td>{layer}</td>" in html


def test_the_whole_analysis_with_prediction_measurement_and_export(sample_profile, exported):  # noqa: F811
    schedule = Schedule(SCHEDULE, meta={"method": "hand-tuned", "totals": {"global_sparsity": 0.61,
                                                                            "params_kept": 0.39, "flops_kept": 0.5}})
    measured = {"dense": {"accuracy": 0.99}, "pruned": {"accuracy": 0.5}, "bn_recalibrated": {"accuracy": 0.8}}
    html = build_report(sample_profile, schedule=schedule, measurement=measured, export=exported, plotlyjs="cdn")
    assert re.findall(r"<h2>(\w+)</h2>", html) == ["Sensitivity", "Schedule", "Export"]
    assert _figures(html) == 3 and 'src="https://cdn.plot.ly' in html and not re.search(r"plotly.js v\d", html)
    predicted = Predictor(sample_profile).predict(schedule)
    assert f"<td>{predicted:.4f}</td>" in html
    assert "<td>0.5000</td>" in html and "<td>0.8000</td>" in html and "measured: bn recalibrated" in html
    assert "Verification passed" in html
    assert f"<td>{exported.pruned.nonzero_params}</td>" in html


def test_a_failed_verification_and_bad_options_read_clearly(sample_profile, exported):  # noqa: F811
    broken = exported.to_dict()
    broken["verifications"][0]["passed"] = False
    assert "Verification FAILED" in build_report(sample_profile, export=broken)
    with pytest.raises(ValueError, match="plotlyjs"):
        build_report(sample_profile, plotlyjs="nowhere")
    with pytest.raises(ValueError, match="accuracy"):
        build_report(sample_profile, metric="accuracy-ish")


def test_load_export_reads_the_markdown_summary_the_cli_writes(exported, tmp_path):
    assert load_export(exported.onnx_path.parent).startswith("# Prunescope export")
    with pytest.raises(ValueError, match="no .onnx file"):
        load_export(tmp_path)


def test_cli_report_writes_the_whole_analysis(sample_profile, exported, tmp_path):  # noqa: F811
    scan_dir = sample_profile.save(tmp_path / "scan")
    Schedule(SCHEDULE).save(tmp_path / "s.json")
    out = tmp_path / "r" / "report.html"
    done = run_cli("report", "--scan", scan_dir, "--schedule", tmp_path / "s.json", "--export-dir",
                   exported.onnx_path.parent, "--plotlyjs", "cdn", "--out", out)
    assert done.returncode == 0, done.stderr
    html = out.read_text()
    assert re.findall(r"<h2>(\w+)</h2>", html) == ["Sensitivity", "Schedule", "Export"]
    predicted = Predictor(sample_profile).predict(SCHEDULE)
    assert f"<td>{predicted:.4f}</td>" in html
    assert "Verification" in html and "<table>" in html


@pytest.mark.parametrize("args,message", [
    (["--scan", "nowhere"], "scan folder nowhere does not exist"),
    (["--scan", "SCAN", "--schedule", "missing.json"], "missing.json does not exist"),
    (["--scan", "SCAN", "--export-dir", "nowhere"], "export folder nowhere does not exist"),
    (["--scan", "SCAN", "--metric", "accuracy", "--out", "report.txt"], "--out must end in .html"),
])
def test_cli_report_errors_are_one_line(args, message, sample_profile, tmp_path, capsys):  # noqa: F811
    scan_dir = sample_profile.save(tmp_path / "scan")
    argv = ["report", *[str(scan_dir) if a == "SCAN" else a for a in args]]
    assert main(argv if "--out" in argv else [*argv, "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunescope: error:") and message in err and len(err.strip().splitlines()) == 1


def test_cli_dashboard_rejects_a_bad_port(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["dashboard", "--port", "70000"])
    assert stop.value.code == 2 and "port 70000 is outside 1 to 65535" in capsys.readouterr().err


def test_cli_dashboard_serves_the_app(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "analysis", "dashboard", "--port", str(port), "--",
                             "--server.headless", "true", "--server.fileWatcherType", "none"],
                            cwd=tmp_path, env=cli_env(PRUNESCOPE_HOME=str(tmp_path)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    assert r.read().strip() == b"ok"
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the dashboard did not come up in 60 s"
                time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert b"<title>" in r.read()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
