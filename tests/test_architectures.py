"""Every architecture shrinks: the 14 torchvision architectures Torch-Pruning's own suite prunes (random weights,
small inputs) are scanned by channel, scheduled uniformly per coupled group and exported shrunk, and the file
passes its verification with nothing exported differently from the schedule."""

from __future__ import annotations

import pytest
import torch

from analysis.core.data import EvalData
from analysis.core.layers import find_layers
from analysis.deploy.export import export
from analysis.schedule.allocate import Target, allocate
from analysis.schedule.totals import Accountant
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.driver import scan
from analysis.workload.workload import Workload

torchvision = pytest.importorskip("torchvision")

# arch: (input side, exporter). The TorchScript exporter cannot write an adaptive pooling whose output does not
# divide its input (alexnet, vgg11_bn at small sizes) nor find a MultiheadAttention's packed weights by name
# (vit_b_16); the dynamo exporter keeps parameter names and handles both.
ARCHS = {
    "alexnet": (64, "dynamo"), "resnet18": (64, "torchscript"), "resnext50_32x4d": (64, "torchscript"),
    "vgg11_bn": (32, "dynamo"), "squeezenet1_1": (64, "torchscript"), "densenet121": (64, "torchscript"),
    "mobilenet_v2": (64, "torchscript"), "mobilenet_v3_small": (64, "torchscript"),
    "mnasnet0_5": (64, "torchscript"), "efficientnet_b0": (64, "torchscript"),
    "regnet_y_400mf": (64, "torchscript"), "googlenet": (64, "torchscript"), "convnext_tiny": (64, "torchscript"),
    "vit_b_16": (32, "dynamo"),
}
EXTRA = {"googlenet": dict(aux_logits=False, init_weights=True), "vit_b_16": dict(image_size=32)}


def _workload(arch: str) -> Workload:
    side, _ = ARCHS[arch]
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10, **EXTRA.get(arch, {})).eval()
    x = torch.randn(4, 3, side, side)
    data = EvalData(x, torch.randint(0, 10, (4,)), f"random:3x{side}x{side}")
    return Workload(model, data, f"torchvision:{arch}", 10, (3, side, side))


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_architecture_scans_schedules_per_group_and_exports_shrunk(arch, tmp_path):
    w = _workload(arch)
    profile = scan(w, ScanConfig(criterion="l1", granularity="channel", sparsities=(0.5,), batch_size=4))
    layers = find_layers(w.model, w.data.x[:1])
    accountant = Accountant.from_model(w.model, w.data.x[:1], layers, "l1", "channel")
    coupling = accountant.coupling
    assert not coupling.shrinkable, coupling.shrinkable
    schedule = allocate("uniform", layers, Target("sparsity", 0.4), granularity="channel", criterion="l1",
                        accountant=accountant, profile=profile)
    prunable = [g for g in coupling.groups if g.prunable]
    assert prunable and all(g.kept for g in coupling.groups if layers[-1].name in g.layers), "classes kept"
    for group in coupling.groups:  # one value per coupled group
        assert len({schedule.sparsities.get(n, 0.0) for n in group.layers}) == 1, group.layers
    report = export(w.model, schedule, w.data, tmp_path / f"{arch}.onnx", shrink_channels=True,
                    exporter=ARCHS[arch][1], measure_latency=False)
    assert report.mode == "shrunk" and all(v.passed for v in report.verifications)
    assert report.schedule.sparsities == schedule.sparsities and report.notes == []
    assert report.pruned.params < 0.9 * report.dense.params
