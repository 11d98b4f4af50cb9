"""The Schedule page's sliders in the browser count what the server counts: ``ui/live_sliders/live.js`` run on
``analysis.schedule.live.browser_facts`` against ``Accountant.totals`` and ``Predictor.prediction``.

The JS runs in Node when it is installed, else in Debian's Chromium (the browser tests' one); with neither the
test is skipped.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from analysis.core.layers import find_layers
from analysis.schedule.live import browser_facts, supported
from analysis.schedule.predict import Predictor
from analysis.schedule.totals import Accountant
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.driver import scan
from analysis.workload.workload import load_workload

ROOT = Path(__file__).resolve().parent.parent
LIVE_JS = ROOT / "ui" / "live_sliders" / "live.js"
RUN = """(input) => input.cases.map(c => {
  const t = totals(input.facts, c.values), p = prediction(input.facts, c.values, c.order);
  return {totals: t, prediction: p, shown: [fixed(t.global_sparsity, 4), fixed(t.params_kept_fraction, 4),
          fixed(t.flops_kept_fraction, 4), fixed(p.value, 4), signed(p.value - p.dense, 4), grouped(t.params_kept)]};
})"""


def run_js(data: dict) -> list[dict]:
    """``RUN`` on ``data`` in Node, else in Chromium."""
    node = shutil.which("node")
    if node:
        script = f"const {{totals, prediction, fixed, signed, grouped}} = require({json.dumps(str(LIVE_JS))});\n" \
                 f"const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n" \
                 f"process.stdout.write(JSON.stringify(({RUN})(input)));"
        out = subprocess.run([node, "-e", script], input=json.dumps(data), capture_output=True, text=True,
                             check=True, timeout=60)
        return json.loads(out.stdout)
    from browser_support import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip("neither node nor chromium is installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.add_script_tag(content=LIVE_JS.read_text())
        out = page.evaluate(RUN, data)
        browser.close()
    return json.loads(json.dumps(out))


@pytest.fixture(scope="module")
def cnn():
    """The CNN sample, its layers and a 3-sparsity scan of it."""
    workload = load_workload("sample:digits-cnn", "sample:digits", count=200)
    layers = find_layers(workload.model, workload.data.x[:1])
    profile = scan(workload, ScanConfig(sparsities=(0.3, 0.6, 0.9)))
    return workload, layers, profile


def schedules(names: list[str], count: int, seed: int = 0) -> list[dict[str, float]]:
    """Random slider positions on the 0.001 grid, some layers dense, some past the last measured sparsity."""
    rng = random.Random(seed)
    out = [{n: 0.0 for n in names}, {n: 0.5 for n in names}, {n: 0.99 for n in names}]
    for _ in range(count):
        out.append({n: rng.choice([0.0, round(rng.randint(1, 990) * 0.001, 6)]) for n in names})
    return out


def python_side(accountant: Accountant, predictor: Predictor, values: dict[str, float], granularity: str) -> dict:
    sparsities = {k: v for k, v in values.items() if v > 0}
    t = accountant.totals(sparsities, granularity)
    p = predictor.prediction(sparsities)
    return {"totals": t, "prediction": p,
            "shown": [f"{t.global_sparsity:.4f}", f"{t.params_kept_fraction:.4f}", f"{t.flops_kept_fraction:.4f}",
                      f"{p.value:.4f}", f"{p.value - p.dense:+.4f}", f"{t.params_kept:,}"]}


def nan_or(value: float | None) -> float:
    return float("nan") if value is None else value


@pytest.mark.parametrize("model,power", [("additive", 1.0), ("calibrated", 0.7)])
def test_the_browser_counts_what_the_server_counts(cnn, model, power):
    """Totals equal to the integer; the prediction and its band equal (the calibrated model's log/exp to 1e-12);
    every number the page shows, as it shows it, equal."""
    _, layers, profile = cnn
    accountant = Accountant(layers)
    predictor = Predictor(profile, "accuracy", model=model, power=power)
    facts = browser_facts(layers, "unstructured", predictor)
    names = list(profile.layers)
    cases = schedules(names, 40)
    out = run_js({"facts": facts, "cases": [{"values": v, "order": names} for v in cases]})
    assert len(out) == len(cases)
    exact = model == "additive"
    for values, js in zip(cases, out):
        py = python_side(accountant, predictor, values, "unstructured")
        t, p = py["totals"], py["prediction"]
        assert (js["totals"]["weights_removed"], js["totals"]["params_kept"], js["totals"]["flops_kept"]) == \
            (t.weights_removed, t.params_kept, t.flops_kept), values
        assert js["totals"]["global_sparsity"] == t.global_sparsity
        assert js["totals"]["flops_kept_fraction"] == t.flops_kept_fraction
        for key in ("value", "lo", "hi"):
            ours, theirs = nan_or(js["prediction"][key]), getattr(p, key)
            if exact:
                assert ours == theirs or (ours != ours and theirs != theirs), (key, values)
            else:
                assert ours == pytest.approx(theirs, abs=1e-12, nan_ok=True), (key, values)
        assert js["shown"] == py["shown"], values
    assert {o["shown"][0] for o in out} > {"0.0000"}  # the schedules did prune


def test_a_fixed_pattern_schedule_is_counted_alike(cnn):
    """An N:M (2:4) schedule: every layer's two-stop slider, on or off."""
    workload, layers, _ = cnn
    profile = scan(workload, ScanConfig(granularity="2:4", sparsities=(0.5,)))
    predictor = Predictor(profile, "accuracy")
    facts = browser_facts(layers, "2:4", predictor)
    names = list(profile.layers)
    cases = [{n: (0.5 if (i >> k) & 1 else 0.0) for k, n in enumerate(names)} for i in range(2 ** len(names))]
    out = run_js({"facts": facts, "cases": [{"values": v, "order": names} for v in cases]})
    for values, js in zip(cases, out):
        py = python_side(Accountant(layers), predictor, values, "2:4")
        assert js["totals"]["params_kept"] == py["totals"].params_kept
        assert js["shown"] == py["shown"], values


def test_ties_round_as_python_does():
    """0.03125 is exactly half-way at 4 decimals: Python rounds to even, and so does the page."""
    cases = [0.03125, 0.09375, 0.5, 2.5, 0.00005, 1 / 3]
    script_input = {"facts": {"layers": [], "weights": 1, "flops": 1,
                              "predictor": {"baseline": 0.0, "higher_is_better": True, "bounded": False,
                                            "chance": None, "floor": 0.0, "model": "additive", "power": 1.0}},
                    "cases": [{"values": {}, "order": []}]}
    js = run_js(script_input)[0]
    assert js["shown"][0] == "0.0000"
    node = shutil.which("node")
    if node is None:
        pytest.skip("the rounding cases need node")
    script = (f"const {{fixed, pyRound}} = require({json.dumps(str(LIVE_JS))});"
              f"process.stdout.write(JSON.stringify({json.dumps(cases)}.map(x => [fixed(x, 4), pyRound(x * 2)])));")
    out = json.loads(subprocess.run([node, "-e", script], capture_output=True, text=True, check=True).stdout)
    assert out == [[f"{x:.4f}", round(x * 2)] for x in cases]


def test_channel_schedules_stay_on_the_server(cnn):
    _, layers, profile = cnn
    assert supported("unstructured") and supported("2:4") and not supported("channel")
    with pytest.raises(ValueError, match="counted on the server"):
        browser_facts(layers, "channel", Predictor(profile, "accuracy"))
