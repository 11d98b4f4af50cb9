"""Masks: exact counts per granularity, tie-free ranking, and bit-exact restore."""

import pytest
import torch
from torch import nn

from analysis.core.granularity import check_sparsity, is_nm, parse_granularity, supports
from analysis.core.masks import applied, make_mask, make_masks


def test_magnitude_removes_exactly_the_smallest():
    torch.manual_seed(0)
    w = torch.randn(32, 17)
    for s in (0.1, 0.33, 0.5, 0.9):
        keep = make_mask(w.abs(), s, "unstructured")
        removed = (~keep).sum().item()
        assert removed == round(s * w.numel())
        assert w.abs()[~keep].max() <= w.abs()[keep].min()


def test_channel_mask_removes_whole_output_channels():
    torch.manual_seed(1)
    w = torch.randn(10, 4, 3, 3)
    keep = make_mask(w.abs(), 0.3, "channel", "l1")
    per_channel = keep.reshape(10, -1)
    assert ((per_channel.all(1)) | (~per_channel).all(1)).all(), "a channel is either kept or removed whole"
    removed = (~per_channel.all(1)).nonzero().flatten().tolist()
    assert len(removed) == 3
    norms = w.abs().reshape(10, -1).sum(1)
    assert set(removed) == set(norms.argsort()[:3].tolist())


def test_l2_channel_ranking_uses_the_l2_norm():
    w = torch.zeros(3, 4)
    w[0] = torch.tensor([3.0, 0, 0, 0])    # L1 3, L2 3
    w[1] = torch.tensor([1.0, 1, 1, 1])    # L1 4, L2 2
    w[2] = torch.tensor([5.0, 5, 5, 5])
    assert not make_mask(w.abs(), 1 / 3, "channel", "l1")[0].any()
    assert not make_mask(w * w, 1 / 3, "channel", "l2")[1].any()


@pytest.mark.parametrize("shape", [(8, 16), (6, 8, 3, 3)])
def test_two_four_keeps_two_of_every_four(shape):
    torch.manual_seed(2)
    w = torch.randn(shape)
    keep = make_mask(w.abs(), 0.5, "2:4")
    pruned = w * keep
    assert is_nm(pruned, 2, 4)
    assert (~keep).sum().item() == w.numel() // 2
    # Groups run along the input dimension at each kernel position.
    groups = pruned.movedim(1, -1).reshape(-1, 4) if len(shape) > 2 else pruned.reshape(-1, 4)
    assert ((groups != 0).sum(1) == 2).all()


def test_two_four_rejects_other_sparsities_and_odd_shapes():
    with pytest.raises(ValueError, match="exactly 0.5"):
        make_mask(torch.rand(4, 8), 0.3, "2:4")
    with pytest.raises(ValueError, match="not a multiple of 4"):
        make_mask(torch.rand(4, 3, 3, 3), 0.5, "2:4")
    assert supports(parse_granularity("2:4"), (16, 1, 3, 3)) is not None


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), "abc", None])
def test_bad_sparsity_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="sparsity"):
        check_sparsity(bad)


def test_unknown_granularity():
    with pytest.raises(ValueError, match="unknown granularity"):
        parse_granularity("rows")
    with pytest.raises(ValueError):
        parse_granularity("4:2")


def test_make_masks_matches_make_mask_for_each_sparsity():
    torch.manual_seed(3)
    scores = torch.rand(20, 20)
    sparsities = [0.0, 0.25, 0.5, 0.75]
    for s, m in zip(sparsities, make_masks(scores, sparsities, "unstructured")):
        assert torch.equal(m, make_mask(scores, s, "unstructured"))


def test_applied_restores_bit_for_bit_even_on_error():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = make_mask(model[0].weight.abs(), 0.5, "unstructured")
    with applied(model, {"0.weight": mask}):
        assert (model[0].weight == 0).sum().item() >= 32
        assert torch.equal(model[1].weight, before["1.weight"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.data_ptr() == model.state_dict()[k].data_ptr()
    with pytest.raises(RuntimeError):
        with applied(model, {"0.weight": mask}):
            raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
