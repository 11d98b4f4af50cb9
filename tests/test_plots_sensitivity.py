"""The sensitivity figures: what they draw is the profile's numbers, in model order, with exact hovers."""

from __future__ import annotations

import pytest
import torch

from analysis.core.layers import find_layers, layer_table
from analysis.report import plots
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.driver import scan


@pytest.fixture(scope="module")
def profiles(workloads):
    cnn = workloads["digits-cnn"]
    return (scan(cnn, ScanConfig(sparsities=(0.3, 0.9))),
            scan(cnn, ScanConfig(criterion="random", sparsities=(0.3, 0.9), layers=("block2.0", "fc"))))


def test_heatmap_is_the_drop_in_points_per_layer_and_sparsity(profiles):
    profile, _ = profiles
    fig = plots.sensitivity_heatmap(profile)
    heat = fig.data[0]
    assert list(heat.y) == profile.layers
    assert list(heat.x) == ["0", "0.3", "0.9"]
    drop = profile.drop("accuracy")
    for i, layer in enumerate(profile.layers):
        expected = drop[drop["layer"] == layer].sort_values("sparsity")["drop"] * 100
        assert heat.z[i] == pytest.approx(expected.tolist())
        assert heat.z[i][0] == 0.0
    assert heat.zmid == 0.0 and heat.zmax == pytest.approx(max(abs(v) for row in heat.z for v in row))


def test_label_free_profile_has_no_accuracy_views(workloads):
    from analysis.core.data import EvalData
    from analysis.workload.workload import Workload

    cnn = workloads["digits-cnn"]
    unlabelled = Workload(cnn.model, EvalData(cnn.data.x[:64], None, "x-only"), cnn.model_spec, 10, cnn.input_shape)
    profile = scan(unlabelled, ScanConfig(sparsities=(0.5,), layers=("fc",)))
    assert plots.sensitivity_heatmap(profile).data[0].colorbar.title.text == "drop (points)"
    assert "agreement" in plots.sensitivity_curves(profile).layout.title.text
    with pytest.raises(ValueError, match="no labels"):
        plots.sensitivity_heatmap(profile, "accuracy")
    with pytest.raises(ValueError, match="unknown metric 'top5'"):
        plots.sensitivity_curves(profile, "top5")


def test_curves_hover_shows_exact_numbers(profiles):
    profile, _ = profiles
    fig = plots.sensitivity_curves(profile, "loss", layers=["fc", "block1.0"])
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["block1.0", "fc"]
    fc = lines[1]
    rows = profile.table[profile.table["layer"] == "fc"].sort_values("sparsity")
    assert [c[2] for c in fc.customdata] == pytest.approx(rows["loss"].tolist())
    assert list(fc.y) == pytest.approx((rows["loss"] - profile.baseline("loss")).tolist())
    assert "loss %{customdata[2]:.4f}" in fc.hovertemplate


def test_overlay_draws_shared_layers_of_both_profiles(profiles):
    first, second = profiles
    fig = plots.profile_overlay(first, second)
    assert [t.name for t in fig.data] == ["block2.0 (magnitude/unstructured)", "fc (magnitude/unstructured)",
                                          "block2.0 (random/unstructured)", "fc (random/unstructured)"]
    assert [t.line.dash for t in fig.data] == [None, None, "dash", "dash"]
    assert fig.data[0].line.color == fig.data[2].line.color
    with pytest.raises(ValueError, match="no layer in common"):
        plots.profile_overlay(first, second, layers=["block1.0"])


def test_layer_summary_bar_shows_shares_of_params_and_flops(workloads):
    cnn = workloads["digits-cnn"]
    table = layer_table(find_layers(cnn.model, torch.zeros(1, 1, 8, 8)))
    fig = plots.layer_summary_bar(table)
    params, flops = fig.data
    assert list(params.x) == list(table["layer"])
    assert sum(params.y) == pytest.approx(100) and sum(flops.y) == pytest.approx(100)
    assert list(params.customdata) == list(table["params"])
    with pytest.raises(ValueError, match="flops_share"):
        plots.layer_summary_bar(table.drop(columns=["flops_share"]))


@pytest.mark.parametrize("value", [0.0, float("nan")])
def test_heatmap_of_drops_all_zero_or_unmeasured_keeps_a_readable_colour_range(profiles, value):
    """An ONNX scan came out blank grey with colour-bar ticks 1n / -1n: the range must not collapse to 1e-9."""
    profile, _ = profiles
    flat = type(profile)(profile.table.assign(accuracy=profile.baseline("accuracy") if value == 0 else value),
                         profile.meta)
    heat = plots.sensitivity_heatmap(flat, "accuracy").data[0]
    assert heat.zmax == -heat.zmin == plots.colour_limit(flat.drop("accuracy").pivot_table(
        index="layer", columns="sparsity", values="drop", aggfunc="first")) >= 1e-3


def test_heatmap_marks_cells_within_noise_and_curves_draw_the_intervals(profiles):
    profile, _ = profiles
    drops = profile.drop("accuracy")
    noise = drops[(drops["sparsity"] > 0) & (drops["drop_lo"] <= 0) & (drops["drop_hi"] >= 0)]
    assert 0 < len(noise) < len(drops[drops["sparsity"] > 0])
    marked = next(t for t in plots.sensitivity_heatmap(profile).data if (t.name or "").startswith("drop within noise"))
    assert sorted(zip(marked.y, marked.x)) == sorted(zip(noise["layer"], (f"{s:g}" for s in noise["sparsity"])))
    fig = plots.sensitivity_curves(profile, layers=["fc"])
    band = next(t for t in fig.data if t.fill == "toself")
    fc = drops[drops["layer"] == "fc"].sort_values("sparsity")
    assert list(band.y) == pytest.approx([*(fc["drop_hi"] * 100), *(fc["drop_lo"] * 100)[::-1]])
    wider = plots.sensitivity_curves(profile.with_confidence(0.99), layers=["fc"])
    assert max(next(t for t in wider.data if t.fill == "toself").y) > max(band.y)
