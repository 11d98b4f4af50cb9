"""Schedules: totals, allocation to a target, bounds, prediction, sparse fine-tuning, evaluate and schedule CLIs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from analysis.cli import main
from analysis.core.granularity import parse_granularity
from analysis.core.layers import find_layers
from analysis.core.profile import SensitivityProfile
from analysis.schedule.allocate import METHODS, Bounds, Target, allocate, parse_target, slots
from analysis.schedule.finetune import finetune
from analysis.schedule.predict import MODELS, Predictor, isotonic
from analysis.schedule.schedule import Schedule, ScheduleError
from analysis.schedule.totals import Accountant, totals, unit_size
from tests.conftest import run_cli

# --------------------------------------------------------------------------------------------- hand-built models


class Chain(nn.Module):
    """conv(3->8) -> BN -> ReLU -> conv(8->16) -> ReLU -> avgpool -> flatten -> linear(16->10)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c2(torch.relu(self.bn(self.c1(x)))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Flat(nn.Module):
    """conv(3->4) on 2x2 inputs, flattened straight into linear(16->5): each channel feeds 4 features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


class Residual(nn.Module):
    """a = conv_a(x); b = conv_b(a); conv_c reads a + b (a residual sum couples a and b)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1, bias=False)
        self.b = nn.Conv2d(4, 4, 1, bias=False)
        self.c = nn.Conv2d(4, 6, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        return self.c(a + torch.relu(self.b(a))).mean(dim=(2, 3))


def _setup(model: nn.Module, hw: int) -> tuple[list, torch.Tensor]:
    model.eval()
    example = torch.zeros(1, 3, hw, hw)
    return find_layers(model, example), example


def _channel_accountant(model: nn.Module, hw: int) -> tuple[Accountant, list]:
    layers, example = _setup(model, hw)
    return Accountant.from_model(model, example, layers, "magnitude", "channel"), layers


def test_totals_exact_on_a_chain_with_channel_pruning() -> None:
    acc, layers = _channel_accountant(Chain(), 8)
    t = acc.totals({"c1": 0.5, "c2": 0.25}, "channel", per_layer=True)
    # By hand: c1 keeps 4 of 8 outputs (4*3*9); c2 keeps 12 of 16 outputs and 4 of 8 inputs (12*4*9);
    # fc keeps all 10 outputs but only the 12 inputs c2 still produces (10*12).
    kept = {"c1": 4 * 3 * 9, "c2": 12 * 4 * 9, "fc": 10 * 12}
    weights = {"c1": 8 * 3 * 9, "c2": 16 * 8 * 9, "fc": 10 * 16}
    assert {k: v["params_kept"] for k, v in t.per_layer.items()} == kept
    assert t.weights == sum(weights.values())
    assert t.params_kept == sum(kept.values())
    assert t.weights_removed == 4 * 3 * 9 + 4 * 8 * 9
    flops = {"c1": 2 * 8 * 3 * 9 * 64, "c2": 2 * 16 * 8 * 9 * 64, "fc": 2 * 160}
    assert t.flops == sum(flops.values())
    assert t.flops_kept == sum(flops[k] * kept[k] // weights[k] for k in kept)
    assert t.global_sparsity == pytest.approx((4 * 3 * 9 + 4 * 8 * 9) / sum(weights.values()))


def test_totals_exact_when_a_flattened_channel_feeds_several_features() -> None:
    acc, _ = _channel_accountant(Flat(), 2)
    t = acc.totals({"conv": 0.5}, "channel", per_layer=True)
    assert t.per_layer["conv"]["params_kept"] == 2 * 3 * 9
    assert t.per_layer["fc"]["params_kept"] == 5 * 8  # two channels go: 2 x 4 of the 16 features
    assert t.per_layer["fc"]["inputs_removed"] == 8
    assert acc.coupling.by_layer["fc"].kept  # its channels are the outputs


def test_a_residual_sum_couples_its_addends_to_the_smallest_sparsity_asked() -> None:
    acc, _ = _channel_accountant(Residual(), 3)
    group = acc.coupling.by_layer["a"]
    assert group is acc.coupling.by_layer["b"] and sorted(group.consumers) == ["b", "c"]
    resolved = acc.resolve({"a": 0.5, "b": 0.25})
    assert resolved.sparsities == {"a": 0.25, "b": 0.25}
    assert "limited by b" in resolved.notes[0]
    t = acc.totals({"a": 0.5, "b": 0.25}, "channel", per_layer=True)
    # one of the four channels goes: from a's and b's rows, b's inputs and c's inputs
    assert {k: v["params_kept"] for k, v in t.per_layer.items()} == {"a": 3 * 3, "b": 3 * 3, "c": 6 * 3}


def test_unstructured_totals_count_the_zeros_of_the_actual_masks(workloads) -> None:
    wl = workloads["digits-cnn"]
    layers = find_layers(wl.model, wl.data.x[:1])
    schedule = Schedule({layers[0].name: 0.33, layers[2].name: 0.71, layers[-1].name: 0.5})
    keep = schedule.masks(wl.model, layers)
    zeros = sum(int((~m).sum()) for m in keep.values())
    t = totals(schedule, layers)
    assert t.weights_removed == zeros
    assert t.params_kept == t.weights - zeros
    expected_flops = sum(l.flops * int(keep[l.param_name].sum()) // l.params if l.param_name in keep else l.flops
                         for l in layers)
    assert t.flops_kept == expected_flops


def test_totals_reject_a_layer_the_model_lacks(workloads) -> None:
    layers = find_layers(workloads["digits-mlp"].model, workloads["digits-mlp"].data.x[:1])
    with pytest.raises(ValueError, match="nope"):
        Accountant(layers).totals({"nope": 0.5})


# ------------------------------------------------------------------------------------------------- allocation


def _fake_profile(layers: list, seed: int = 0) -> SensitivityProfile:
    """A profile with made-up, layer-specific curves (some non-monotone), for allocation without a scan."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, layer in enumerate(layers):
        knee = 0.3 + 0.6 * rng.random()
        for s in (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95):
            acc = 0.98 - max(0.0, s - knee) * (2 + i) + (0.01 if s == 0.6 else 0.0) * (s > 0)
            rows.append({"layer": layer.name, "type": layer.kind, "sparsity": s, "accuracy": max(acc, 0.1),
                         "loss": 0.1 + s, "agreement": max(acc, 0.1), "kl": s, "params": layer.params,
                         "flops": layer.flops})
    meta = {"baseline": {"accuracy": 0.98, "loss": 0.1, "agreement": 1.0, "kl": 0.0}, "labelled": True,
            "num_classes": 10}
    return SensitivityProfile(pd.DataFrame(rows), meta)


@pytest.fixture(scope="module")
def cnn(workloads):
    wl = workloads["digits-cnn"]
    layers = find_layers(wl.model, wl.data.x[:1])
    weights = {l.name: l.weight(wl.model).detach() for l in layers}
    accountants = {g: Accountant.from_model(wl.model, wl.data.x[:1], layers, "magnitude", g)
                   for g in ("unstructured", "channel")}
    return layers, weights, accountants, _fake_profile(layers)


def _one_unit_slack(acc: Accountant, sparsities: dict, gran: str, kind: str) -> float:
    """How much the target metric moves when each slot (layer, or coupled group) gives up one more unit: the
    allowed miss."""
    base = acc.totals(sparsities, gran)
    slack = 0.0
    for slot in slots(acc.layers, gran, acc):
        s = sparsities.get(slot.members[0].name, 0.0)
        more = dict(sparsities, **{l.name: min(s + 1 / slot.units, (slot.units - 1) / slot.units)
                                   for l in slot.members})
        t = acc.totals(more, gran)
        slack += {"sparsity": t.weights_removed - base.weights_removed, "params": base.params_kept - t.params_kept,
                  "flops": base.flops_kept - t.flops_kept}[kind]
    return slack


@pytest.mark.parametrize("gran", ["unstructured", "channel"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind, fraction", [("sparsity", 0.6), ("params", 0.35), ("flops", 0.5)])
def test_every_method_hits_its_target_within_one_unit_per_layer(cnn, method: str, gran: str, kind: str,
                                                                  fraction: float) -> None:
    layers, weights, accountants, profile = cnn
    acc = accountants[gran]
    value = fraction if kind == "sparsity" else fraction * (acc.flops if kind == "flops" else acc.weights)
    target = Target(kind, value)
    schedule = allocate(method, layers, target, granularity=gran, accountant=acc, weights=weights, profile=profile)
    t = acc.totals(schedule)
    achieved = {"sparsity": t.weights_removed, "params": t.params_kept, "flops": t.flops_kept}[kind]
    goal = value * acc.weights if kind == "sparsity" else value
    assert abs(achieved - goal) <= _one_unit_slack(acc, schedule.sparsities, gran, kind) + 1e-9
    if gran == "unstructured" and kind == "sparsity":
        assert abs(achieved - goal) <= len(layers)
    assert schedule.granularity == gran and schedule.meta["method"] == method


@pytest.mark.parametrize("method", METHODS)
def test_bounds_are_honoured_by_every_method(cnn, method: str) -> None:
    layers, weights, accountants, profile = cnn
    first, last = layers[0].name, layers[-1].name
    bounds = Bounds(max_sparsity=0.85, per_layer={last: 0.3}, keep_dense=(first,))
    schedule = allocate(method, layers, Target("sparsity", 0.7), accountant=accountants["unstructured"],
                        weights=weights, profile=profile, bounds=bounds)
    assert first not in schedule.sparsities
    assert schedule.sparsities.get(last, 0.0) <= 0.3
    assert all(s <= 0.85 for s in schedule.sparsities.values())
    assert accountants["unstructured"].totals(schedule).global_sparsity == pytest.approx(0.7, abs=len(layers) / 1e4)


def test_an_unreachable_target_says_how_far_the_bounds_allow(cnn) -> None:
    layers, weights, accountants, profile = cnn
    with pytest.raises(ScheduleError, match="out of reach"):
        allocate("uniform", layers, Target("sparsity", 0.9), accountant=accountants["unstructured"],
                 bounds=Bounds(max_sparsity=0.5))
    with pytest.raises(ScheduleError, match="which the model does not have"):
        allocate("uniform", layers, Target("sparsity", 0.5), bounds=Bounds(keep_dense=("nope",)))


def test_global_uses_one_magnitude_threshold(cnn) -> None:
    layers, weights, accountants, profile = cnn
    schedule = allocate("global", layers, Target("sparsity", 0.6), accountant=accountants["unstructured"],
                        weights=weights)
    removed, kept = [], []
    for layer in layers:
        w = weights[layer.name].abs().flatten()
        n = round(schedule.sparsities.get(layer.name, 0.0) * w.numel())
        order = torch.sort(w).values
        removed.append(order[:n])
        kept.append(order[n:])
    assert torch.cat(removed).max() <= torch.cat(kept).min()


def test_lamp_and_erk_follow_their_papers(cnn) -> None:
    layers, weights, accountants, profile = cnn
    erk = allocate("erk", layers, Target("sparsity", 0.5), accountant=accountants["unstructured"])
    density = {l.name: 1 - erk.sparsities.get(l.name, 0.0) for l in layers}
    raw = {l.name: sum(l.shape) / np.prod(l.shape) for l in layers}
    free = [l for l in layers if density[l.name] < 1 - 1e-9]
    ratios = [density[l.name] / raw[l.name] for l in free]
    assert max(ratios) == pytest.approx(min(ratios), rel=0.02)  # one epsilon for every layer not kept dense
    lamp = allocate("lamp", layers, Target("sparsity", 0.5), accountant=accountants["unstructured"], weights=weights)
    # LAMP's threshold: the largest removed LAMP score is below the smallest kept one, over all layers.
    removed, kept = [], []
    for layer in layers:
        sq = torch.sort(weights[layer.name].flatten() ** 2).values.double()
        score = sq / torch.flip(torch.cumsum(torch.flip(sq, [0]), 0), [0])
        n = round(lamp.sparsities.get(layer.name, 0.0) * sq.numel())
        removed.append(score[:n])
        kept.append(score[n:])
    assert torch.cat(removed).max() <= torch.cat(kept).min()


def test_sensitivity_prunes_tolerant_layers_more(cnn) -> None:
    layers, weights, accountants, profile = cnn
    schedule = allocate("sensitivity", layers, Target("sparsity", 0.5), accountant=accountants["unstructured"],
                        profile=profile)
    uniform = allocate("uniform", layers, Target("sparsity", 0.5), accountant=accountants["unstructured"])
    predictor = Predictor(profile)
    assert predictor.predict(schedule) >= predictor.predict(uniform)


def test_parse_target_reads_counts_and_percentages() -> None:
    assert parse_target("params", "1.5k", 10_000).value == 1500
    assert parse_target("flops", "30%", 2_000).value == pytest.approx(600)
    assert parse_target("sparsity", "0.7", 0).value == 0.7
    with pytest.raises(ValueError, match="'lots'"):
        parse_target("params", "lots", 10)
    with pytest.raises(ValueError, match="outside"):
        parse_target("params", "20", 10)


# ------------------------------------------------------------------------------------------------- prediction


def test_isotonic_pools_violators() -> None:
    assert list(isotonic(np.array([0.0, 0.3, 0.1, 0.5]))) == pytest.approx([0.0, 0.2, 0.2, 0.5])


@pytest.mark.parametrize("model", MODELS)
def test_prediction_equals_the_profile_at_single_layer_schedules(cnn, model: str) -> None:
    """Except where the profile is better than dense (its made-up gains have no error bars: noise, they count 0)."""
    profile = cnn[3]
    predictor = Predictor(profile, "accuracy", model, power=0.6)
    assert (profile.table["accuracy"] > 0.98).any()
    for row in profile.table.itertuples():
        expected = min(max(row.accuracy, 0.1), 0.98)  # never below chance (10 classes), never above dense
        assert predictor.predict({row.layer: row.sparsity}) == pytest.approx(expected, abs=1e-9)


def test_additive_prediction_sums_the_layers_drops(cnn) -> None:
    profile = cnn[3]
    t = profile.table
    a, b = profile.layers[:2]
    drop_a = 0.98 - float(t[(t.layer == a) & (t.sparsity == 0.8)].accuracy.iloc[0])
    drop_b = 0.98 - float(t[(t.layer == b) & (t.sparsity == 0.4)].accuracy.iloc[0])
    drop_b_half = 0.98 - float(t[(t.layer == b) & (t.sparsity == 0.6)].accuracy.iloc[0])
    expected = 0.98 - drop_a - (drop_b + drop_b_half) / 2  # 0.5 lies halfway between 0.4 and 0.6
    assert Predictor(profile).predict({a: 0.8, b: 0.5}) == pytest.approx(max(expected, 0.0))


def test_calibration_recovers_how_drops_combine(cnn) -> None:
    profile = cnn[3]
    truth = Predictor(profile, model="calibrated", power=0.5)
    rng = np.random.default_rng(1)
    schedules = [{name: float(rng.choice([0.0, 0.4, 0.6, 0.8])) for name in profile.layers} for _ in range(12)]
    fitted = Predictor(profile).fit([(s, truth.predict(s)) for s in schedules])
    assert fitted.model == "calibrated"
    assert fitted.power == pytest.approx(0.5, rel=0.02)


def test_predictor_rejects_layers_the_profile_lacks(cnn) -> None:
    with pytest.raises(ValueError, match="no measurements for layer 'ghost'"):
        Predictor(cnn[3]).predict({"ghost": 0.5})


# ----------------------------------------------------------------------------------------------- fine-tuning


def test_masks_stay_fixed_during_finetuning(workloads) -> None:
    import copy

    from analysis.workload.data import load_data

    wl = workloads["digits-resnet"]
    model = copy.deepcopy(wl.model)
    layers = find_layers(model, wl.data.x[:1])
    keep = Schedule({l.name: 0.6 for l in layers}).masks(model, layers)
    unmasked_before = {n: model.get_parameter(n).detach().clone() for n in keep}
    train = load_data("sample:digits-train", count=256)
    seen = []

    def check(p) -> None:  # noqa: ANN001
        for name, mask in keep.items():
            assert bool((model.get_parameter(name)[~mask] == 0).all()), f"{name} grew back at step {p.step}"
        seen.append(p.step)

    losses = finetune(model, keep, train.x, train.y, 12, lr=0.05, batch_size=32, progress=check)
    assert seen == list(range(1, 13)) and len(losses) == 12
    changed = [n for n, m in keep.items() if not torch.equal(model.get_parameter(n)[m], unmasked_before[n][m])]
    assert changed == list(keep)  # the kept weights did train
    assert not model.training


def test_finetuning_without_labels_learns_from_soft_targets(workloads) -> None:
    import copy

    wl = workloads["digits-mlp"]
    model = copy.deepcopy(wl.model)
    layers = find_layers(model, wl.data.x[:1])
    keep = Schedule({l.name: 0.8 for l in layers}).masks(model, layers)
    with pytest.raises(ValueError, match="labels"):
        finetune(model, keep, wl.data.x, None, 3)
    soft = wl.model(wl.data.x).detach()
    losses = finetune(model, keep, wl.data.x, None, 30, soft_targets=soft, lr=0.05)
    assert losses[-1] < losses[0]


# ------------------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def mlp_scan(tmp_path_factory, workloads):
    from analysis.sensitivity.config import ScanConfig
    from analysis.sensitivity.driver import scan

    out = tmp_path_factory.mktemp("scan")
    scan(workloads["digits-mlp"], ScanConfig(sparsities=(0.3, 0.6, 0.8, 0.9))).save(out)
    return out


def test_schedule_then_evaluate_end_to_end(mlp_scan, tmp_path) -> None:
    out = tmp_path / "s.json"
    r = run_cli("schedule", "--scan", mlp_scan, "--target-sparsity", "0.7", "--method", "sensitivity",
                "--keep-dense", "fc3", "--out", out)
    assert r.returncode == 0, r.stderr
    saved = Schedule.load(out)
    assert "fc3" not in saved.sparsities and saved.meta["totals"]["global_sparsity"] == pytest.approx(0.7, abs=1e-3)
    r = run_cli("evaluate", "--model", "sample:digits-mlp", "--data", "sample:digits", "--schedule", out,
                "--train-data", "sample:digits-train", "--finetune-steps", "5", "--quiet")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    for key in ("accuracy", "loss", "agreement", "global_sparsity", "params_kept", "flops_kept"):
        assert key in result
    for key in ("accuracy", "agreement", "global_sparsity", "params_kept", "flops_kept"):
        assert 0.0 <= result[key] <= 1.0
    assert result["global_sparsity"] == pytest.approx(saved.meta["totals"]["global_sparsity"])
    assert result["stage"] == "finetuned" and result["pruned"]["accuracy"] <= 1.0


def _main(args: list[str], capsys) -> tuple[int, str]:
    """Run the CLI in this process (argparse errors exit; engine errors return 2 with one line)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_schedule_cli_rejects_bad_targets(mlp_scan, tmp_path, capsys) -> None:
    for args, needle in [(("--target-sparsity", "1.2"), "1.2"), (("--target-params", "lots"), "lots"),
                         (("--target-sparsity", "0.5", "--keep-dense", "ghost"), "ghost"),
                         (("--target-sparsity", "0.99", "--max-sparsity", "0.5"), "out of reach")]:
        code, err = _main(["schedule", "--scan", mlp_scan, *args, "--out", tmp_path / "x.json"], capsys)
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("prunescope: error:") and needle in lines[0], err


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    ('["fc1"]', "mapping"),
    ('{"sparsities": {"fc1": 1.5}}', "1.5"),
    ('{"sparsities": {"fc1": "half"}}', "half"),
    ('{"sparsities": {"ghost": 0.5}}', "ghost"),
    ('{"sparsities": {"fc1": 0.5}, "granularity": "3:2"}', "3:2"),
    ('{"sparsities": {"fc1": 0.3}, "granularity": "2:4"}', "fc1"),
])
def test_bad_schedule_files_give_one_clear_line(tmp_path, capsys, content: str, needle: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    code, err = _main(["evaluate", "--model", "sample:digits-mlp", "--data", "sample:digits", "--schedule", path],
                      capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunescope: error:") and needle in lines[0], err


def test_a_missing_schedule_file_exits_2_from_the_command_line(tmp_path) -> None:
    r = run_cli("evaluate", "--model", "sample:digits-mlp", "--data", "sample:digits",
                "--schedule", tmp_path / "no.json")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr, r.stderr


def test_unit_size_is_a_weight_or_a_channel(cnn) -> None:
    layer = cnn[0][1]
    assert unit_size(layer, parse_granularity("unstructured")) == 1
    assert unit_size(layer, parse_granularity("channel")) == layer.params // layer.shape[0]


def test_torchscript_models_fine_tune_on_a_copy(workloads, tmp_path) -> None:
    import warnings

    from analysis.schedule.measure import measure_schedule
    from analysis.workload.data import load_data
    from analysis.workload.workload import load_workload

    wl = workloads["digits-cnn"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(wl.model, wl.data.x[:2]), str(tmp_path / "cnn.ts"))
    scripted = load_workload(str(tmp_path / "cnn.ts"), "sample:digits", count=64, trust_code=True)
    before = {n: p.detach().clone() for n, p in scripted.model.named_parameters()}
    layers = find_layers(scripted.model, scripted.data.x[:1])
    schedule = Schedule({l.name: 0.5 for l in layers})
    result = measure_schedule(scripted, schedule, train=load_data("sample:digits-train", count=128),
                              finetune_steps=3, lr=0.05)
    assert result.final == "finetuned" and result.info["finetune_loss_first"] > 0
    assert result.stages["finetuned"]["loss"] != result.stages["pruned"]["loss"]  # the copy trained
    assert all(torch.equal(p, before[n]) for n, p in scripted.model.named_parameters())  # the workload did not
