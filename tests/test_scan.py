"""The naive scan: equal to a hand-written loop over torch.nn.utils.prune, and profiles that round-trip."""

import copy

import pandas as pd
import pytest
import torch
import torch.nn.utils.prune as tprune

from analysis.cli import main
from analysis.core.profile import SensitivityProfile, tolerance_table
from analysis.sensitivity.config import MAX_SPARSITIES, ScanConfig
from analysis.sensitivity.driver import scan


def test_mlp_scan_equals_a_hand_loop_over_torch_prune(workloads):
    w = workloads["digits-mlp"]
    sparsities = (0.2, 0.5, 0.8)
    profile = scan(w, ScanConfig(sparsities=sparsities))
    x, y = w.data.x, w.data.y
    with torch.no_grad():
        dense_pred = w.model(x).argmax(1)
    for name in ("fc1", "fc2", "fc3"):
        for s in sparsities:
            model = copy.deepcopy(w.model)
            tprune.l1_unstructured(getattr(model, name), "weight", amount=s)
            with torch.no_grad():
                logits = model(x)
            row = profile.table[(profile.table.layer == name) & (profile.table.sparsity == s)].iloc[0]
            assert row["correct"] == (logits.argmax(1) == y).sum().item()
            assert row["agree"] == (logits.argmax(1) == dense_pred).sum().item()
            loss = torch.nn.functional.cross_entropy(logits, y).item()
            assert row["loss"] == pytest.approx(loss, rel=1e-5)
    # Scanning never leaves the model changed.
    assert torch.equal(w.model.fc1.weight, workloads["digits-mlp"].model.fc1.weight)


def test_profile_shape_baseline_and_round_trip(workloads, tmp_path):
    w = workloads["digits-cnn"]
    before = {k: v.clone() for k, v in w.model.state_dict().items()}
    profile = scan(w, ScanConfig(sparsities=(0.5, 0.9), criterion="l1", granularity="channel"))
    assert all(torch.equal(v, before[k]) for k, v in w.model.state_dict().items())
    t = profile.table
    assert len(t) == 4 * 3 and set(t.sparsity) == {0.0, 0.5, 0.9}
    dense = t[t.sparsity == 0.0]
    assert (dense.accuracy == profile.baseline("accuracy")).all()
    assert t[["accuracy", "loss", "agreement"]].apply(lambda c: c.between(0, 1e9)).all().all()
    profile.save(tmp_path / "p")
    again = SensitivityProfile.load(tmp_path / "p")
    assert again.table[["layer", "sparsity", "correct"]].equals(t[["layer", "sparsity", "correct"]])
    assert again.meta["granularity"] == "channel"


def test_sample_layers_differ_in_sensitivity(workloads):
    """The samples must show real differences between layers (the point of the tool)."""
    for name in ("digits-cnn", "digits-resnet"):
        profile = scan(workloads[name], ScanConfig(sparsities=(0.5, 0.7, 0.9)))
        ranking = tolerance_table(profile, max_drop=0.01)
        assert ranking["max_sparsity"].max() - ranking["max_sparsity"].min() >= 0.5, ranking


def test_progress_done_and_stop(workloads):
    w = workloads["digits-resnet"]
    seen, finished = [], []
    config = ScanConfig(sparsities=(0.5,))
    full = scan(w, config, progress=seen.append, on_result=finished.append)
    assert [p.done for p in seen] == list(range(1, len(full.layers) + 1)) and seen[-1].eta == 0
    partial = scan(w, config, should_stop=lambda: len(finished) >= len(full.layers) + 2,
                   on_result=finished.append)
    assert not partial.meta["complete"] and len(partial.layers) == 2
    resumed = scan(w, config, done={r.layer: r for r in finished[-2:]})
    assert resumed.meta["resumed_layers"] == 2
    assert resumed.table["correct"].tolist() == full.table["correct"].tolist()


def test_two_four_scan_skips_layers_that_cannot_take_it(workloads):
    profile = scan(workloads["digits-cnn"], ScanConfig(granularity="2:4"))
    assert set(profile.table.sparsity) == {0.0, 0.5}
    assert "block1.0" in profile.meta["skipped_layers"]


@pytest.mark.parametrize("config,match", [
    (ScanConfig(sparsities=(1.0,)), "outside"),
    (ScanConfig(criterion="nope"), "unknown criterion"),
    (ScanConfig(layers=("nope",)), "unknown layer"),
    (ScanConfig(granularity="2:4", sparsities=(0.3,)), "not possible"),
    (ScanConfig(engine="warp"), "unknown engine"),
])
def test_bad_configs(workloads, config, match):
    with pytest.raises(ValueError, match=match):
        scan(workloads["digits-mlp"], config)


def test_tolerance_metric_at_max_is_the_cell_at_max_sparsity():
    """``accuracy@max`` is read at the tolerated sparsity, not at the largest one tested; dense when none is."""
    rows = [("a", 0.5, 0.95), ("a", 0.7, 0.94), ("a", 0.9, 0.40), ("b", 0.5, 0.80), ("b", 0.7, 0.70), ("b", 0.9, 0.1)]
    table = pd.DataFrame([{"layer": l, "type": "Linear", "params": 10, "sparsity": s, "accuracy": a, "loss": 1 - a,
                           "agreement": a} for l, s, a in rows])
    profile = SensitivityProfile(table, {"baseline": {"accuracy": 0.95, "loss": 0.05, "agreement": 1.0},
                                         "labelled": True})
    ranking = tolerance_table(profile, max_drop=0.02, metric="accuracy").set_index("layer")
    assert ranking.loc["a", "max_sparsity"] == 0.7 and ranking.loc["a", "max_tested"] == 0.9
    cell = table[(table.layer == "a") & (table.sparsity == ranking.loc["a", "max_sparsity"])]["accuracy"].item()
    assert ranking.loc["a", "accuracy@max"] == cell
    assert ranking.loc["b", "max_sparsity"] == 0.0 and ranking.loc["b", "accuracy@max"] == profile.baseline("accuracy")


def test_a_sparsity_grid_longer_than_the_limit_is_refused_in_one_line(capsys, tmp_path):
    many = tuple(i / 1000 for i in range(1, MAX_SPARSITIES + 2))
    with pytest.raises(ValueError, match=f"{len(many)} sparsities are too many .*at most {MAX_SPARSITIES}"):
        ScanConfig(sparsities=many).validated()
    assert len(ScanConfig(sparsities=many[:MAX_SPARSITIES]).validated().sparsities) == MAX_SPARSITIES + 1  # + dense
    code = main(["scan", "--model", "sample:digits-mlp", "--data", "sample:digits", "--count", "16",
                 "--out", str(tmp_path / "scan"), "--sparsities", ",".join(f"{s:g}" for s in many)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "too many for one scan" in err and len(err.splitlines()) == 1
