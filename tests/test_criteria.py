"""Importance criteria: shapes, seeding, and the data-aware ones on labelled and label-free data."""

import pytest
import torch
from torch import nn

from analysis.core.criteria import collect_stats, importance
from analysis.core.layers import find_layers


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 5)).eval()


def test_every_criterion_scores_every_weight():
    model = _model()
    x = torch.randn(16, 4, 4, 4)
    y = torch.randint(0, 5, (16,))
    layers = find_layers(model, x[:1])
    for criterion in ("magnitude", "l1", "l2", "random", "taylor", "activation"):
        stats = collect_stats(model, layers, x, y, criterion)
        for layer in layers:
            s = importance(layer, layer.weight(model), criterion, stats)
            assert s.shape == layer.shape
            assert torch.isfinite(s).all() and (s >= 0).all()


def test_random_is_seeded_and_differs_between_layers_and_seeds():
    model = _model()
    layers = find_layers(model, torch.randn(1, 4, 4, 4))
    a = importance(layers[0], layers[0].weight(model), "random", seed=1)
    b = importance(layers[0], layers[0].weight(model), "random", seed=1)
    c = importance(layers[0], layers[0].weight(model), "random", seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_taylor_without_labels_still_ranks_weights():
    model = _model()
    x = torch.randn(32, 4, 4, 4)
    layers = find_layers(model, x[:1])
    stats = collect_stats(model, layers, x, None, "taylor")
    for layer in layers:
        assert stats.taylor[layer.param_name].sum() > 0


def test_taylor_leaves_requires_grad_as_it_was():
    model = _model()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(8, 4, 4, 4)
    collect_stats(model, find_layers(model, x[:1]), x, None, "taylor")
    assert not any(p.requires_grad for p in model.parameters())


def test_activation_scores_follow_input_norms():
    model = nn.Sequential(nn.Linear(3, 2, bias=False)).eval()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    x = torch.zeros(10, 3)
    x[:, 0], x[:, 1], x[:, 2] = 1.0, 2.0, 0.0
    layers = find_layers(model, x[:1])
    stats = collect_stats(model, layers, x, None, "activation")
    s = importance(layers[0], model[0].weight, "activation", stats)
    expected = torch.tensor([10 ** 0.5, 2 * 10 ** 0.5, 0.0]).expand(2, 3)
    assert torch.allclose(s, expected, atol=1e-5)


def test_unknown_criterion():
    model = _model()
    layer = find_layers(model, torch.randn(1, 4, 4, 4))[0]
    with pytest.raises(ValueError, match="unknown criterion"):
        importance(layer, layer.weight(model), "entropy")
