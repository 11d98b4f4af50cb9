"""The numbers a user acts on agree with the file they get: over random schedules (unstructured, 2:4 and channel) on
the bundled samples and on small torchvision models, the totals the Schedule page and the CLI show equal the counts
of the exported ONNX file (its initializers: stored weights when shrunk, non-zero ones when masked; FLOPs by the same
counter on the shrunk model), and Measure's accuracy equals the exported file's accuracy on the same samples."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from analysis.core.data import EvalData
from analysis.core.granularity import parse_granularity, supports
from analysis.core.layers import find_layers
from analysis.deploy.export import export
from analysis.schedule.measure import measure_schedule
from analysis.schedule.schedule import Schedule
from analysis.schedule.totals import Accountant

GRANULARITIES = {"unstructured": "magnitude", "2:4": "magnitude", "channel": "l1"}
LEVELS = (0.0, 0.1, 0.25, 0.5, 0.75)
FAST = dict(exporter="torchscript", measure_latency=False)
PROPERTY = settings(max_examples=2, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _layer_weights(path) -> list[np.ndarray]:  # noqa: ANN001
    """The file's weight matrices and kernels: float initializers with two or more dimensions (biases, BatchNorm
    vectors and shape constants are one-dimensional or integer)."""
    arrays = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    return [a for a in arrays if a.ndim >= 2 and np.issubdtype(a.dtype, np.floating)]


def _random_schedule(model: torch.nn.Module, x: torch.Tensor, gran: str, draw) -> Schedule:  # noqa: ANN001
    """A schedule giving every layer the granularity supports a level drawn at random (coupled layers get
    independent values, so channel schedules exercise the resolution too)."""
    g = parse_granularity(gran)
    layers = [l for l in find_layers(model, x[:1]) if supports(g, l.shape) is None]
    levels = (0.0, g.nm_sparsity) if g.kind == "nm" else LEVELS  # N:M prunes exactly N of M or nothing
    values = {l.name: draw(st.sampled_from(levels)) for l in layers}
    return Schedule({n: v for n, v in values.items() if v > 0}, GRANULARITIES[gran], gran)


def _totals(model: torch.nn.Module, x: torch.Tensor, schedule: Schedule):  # noqa: ANN202
    layers = find_layers(model, x[:1])
    accountant = Accountant.from_model(model, x[:1], layers, schedule.criterion, schedule.granularity)
    return accountant.totals(schedule), layers


def _check_counts(model: torch.nn.Module, data: EvalData, schedule: Schedule, out) -> object:  # noqa: ANN001
    """Export ``schedule`` (shrunk when channel) and assert its totals equal the file's counts; the report."""
    totals, layers = _totals(model, data.x, schedule)
    shrink = parse_granularity(schedule.granularity).structured
    report = export(model, schedule, data, out, shrink_channels=shrink, **FAST)
    assert all(v.passed for v in report.verifications)
    weights = _layer_weights(out)
    assert len(weights) == len(layers)
    stored = sum(a.size for a in weights)
    kept = stored if shrink else sum(int(np.count_nonzero(a)) for a in weights)
    assert totals.weights == sum(l.params for l in layers)
    assert totals.params_kept == kept == report.kept["weights"]
    assert totals.flops_kept == report.kept["flops"]
    return report


@pytest.mark.parametrize("sample", ["digits-mlp", "digits-cnn", "digits-resnet"])
@pytest.mark.parametrize("gran", list(GRANULARITIES))
@PROPERTY
@given(draw=st.data())
def test_totals_equal_the_exported_file_and_measure_equals_its_accuracy(workloads, tmp_path, sample, gran, draw):
    w = workloads[sample]
    schedule = _random_schedule(w.model, w.data.x, gran, draw.draw)
    report = _check_counts(w.model, w.data, schedule, tmp_path / f"{sample}-{gran.replace(':', '_')}.onnx")
    measured = measure_schedule(w, schedule)
    assert report.quality["samples"] == measured.info["samples"] == len(w.data)
    n = len(w.data)
    # the same pruned network on the same samples; a prediction may flip only where the two are within float noise
    assert abs(report.quality["pruned_accuracy"] - measured.stages["pruned"]["accuracy"]) <= 1 / n
    assert report.schedule.sparsities == measured.info["applied"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "densenet121"])
@pytest.mark.parametrize("gran", list(GRANULARITIES))
@settings(max_examples=1, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(draw=st.data())
def test_torchvision_totals_equal_the_exported_file(tmp_path, arch, gran, draw):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10).eval()
    x = torch.randn(8, 3, 32, 32)
    data = EvalData(x, torch.randint(0, 10, (8,)), "random:3x32x32")
    schedule = _random_schedule(model, x, gran, draw.draw)
    _check_counts(model, data, schedule, tmp_path / f"{arch}-{gran.replace(':', '_')}.onnx")
