"""Layer discovery: types, order, parameters and FLOPs, in eager, TorchScript and torch.export models."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from analysis.core.layers import find_layers, layer_table, select_layers


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        f = self.conv(x).flatten(2).transpose(1, 2)
        a, _ = self.attn(f, f, f)
        return self.head(a.mean(1))


def test_finds_conv_attention_projections_and_linear_in_order():
    model = Tiny().eval()
    layers = find_layers(model, torch.randn(1, 3, 4, 4))
    assert [(l.name, l.kind) for l in layers] == [
        ("conv", "Conv2d"),
        ("attn.in_proj", "MultiheadAttention.in_proj"),
        ("attn.out_proj", "Linear"),
        ("head", "Linear"),
    ]
    assert layers[1].shape == (24, 8) and layers[1].params == 24 * 8
    assert layers[0].flops == 2 * 8 * 3 * 9 * 16


def test_flops_add_up_to_the_flop_counter_total_on_a_conv_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10)).eval()
    x = torch.randn(1, 1, 8, 8)
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert sum(l.flops for l in find_layers(model, x)) == counter.get_total_flops()


def test_torchscript_and_export_models_have_the_same_layers():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10)).eval()
    x = torch.randn(1, 1, 8, 8)
    eager = [(l.name, l.shape, l.flops) for l in find_layers(model, x)]
    scripted = torch.jit.trace(model, x)
    exported = torch.export.export(model, (x,)).module()
    assert [(l.name, l.shape, l.flops) for l in find_layers(scripted, x)] == eager
    assert [(l.name, l.shape, l.flops) for l in find_layers(exported, x)] == eager


def test_table_shares_and_selection(workloads):
    w = workloads["digits-cnn"]
    layers = find_layers(w.model, w.data.x[:1])
    table = layer_table(layers)
    assert abs(table["params_share"].sum() - 1) < 1e-9 and abs(table["flops_share"].sum() - 1) < 1e-9
    assert [l.name for l in select_layers(layers, ["fc", "block1.0"])] == ["block1.0", "fc"]
    try:
        select_layers(layers, ["nope"])
    except ValueError as exc:
        assert "nope" in str(exc) and "block1.0" in str(exc)
    else:
        raise AssertionError("an unknown layer must be an error")


def test_tracing_leaves_requires_grad_as_it_was():
    from analysis.schedule.coupling import Coupling

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10)).eval()
    model[0].weight.requires_grad_(False)
    x = torch.randn(1, 1, 8, 8)
    layers = find_layers(model, x)
    Coupling.build(model, x, layers)
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True]
    assert torch.is_grad_enabled()


def test_transposed_convolutions_are_named_as_skipped_not_unknown():
    from analysis.sensitivity.config import ScanConfig
    from analysis.sensitivity.context import prepare
    from analysis.workload.data import load_data
    from analysis.workload.workload import Workload

    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.up = nn.Conv2d(1, 4, 3, padding=1), nn.ConvTranspose2d(4, 4, 2, stride=2)
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.up(torch.relu(self.c1(x)))).mean((2, 3)))

    wl = Workload(Up().eval(), load_data("sample:digits", count=8), "up", 10, (1, 8, 8))
    ctx = prepare(wl, ScanConfig(sparsities=(0.5,)))
    assert [l.name for l in ctx.layers] == ["c1", "fc"] and "transposed convolution" in ctx.skipped["up"]
    with pytest.raises(ValueError, match="'up' is a transposed convolution"):
        prepare(wl, ScanConfig(sparsities=(0.5,), layers=("up",)))
