"""Metric sums: exact, additive over shards, label-free when there are no labels."""

import pytest
import torch

from analysis.core.metrics import Sums, evaluate, predict, sums_from_logits, sums_per_variant


def test_sums_from_logits_by_hand():
    dense = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    pruned = torch.tensor([[2.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    s = sums_from_logits(pruned, dense, labels)
    assert (s.n, s.correct, s.agree) == (3, 1, 2)
    m = s.metrics()
    assert abs(m["accuracy"] - 1 / 3) < 1e-12 and abs(m["agreement"] - 2 / 3) < 1e-12
    expected_loss = -torch.log_softmax(pruned, 1)[torch.arange(3), labels].double().sum().item()
    assert abs(s.loss_sum - expected_loss) < 1e-6
    assert sums_from_logits(dense, dense, labels).kl_sum == 0.0


def test_label_free_loss_uses_the_dense_top1():
    dense = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    s = sums_from_logits(dense, dense, None)
    assert s.metrics()["accuracy"] is None and s.agree == 2
    assert abs(s.loss_sum - (-2 * torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0].item())) < 1e-6


def test_shards_add_up_to_the_whole(workloads):
    w = workloads["digits-mlp"]
    dense = predict(w.model, w.data.x)
    whole = evaluate(w.model, w.data.x, w.data.y, dense, batch_size=64)
    parts = Sums()
    for lo, hi in ((0, 100), (100, 333), (333, len(w.data))):
        parts = parts + evaluate(w.model, w.data.x[lo:hi], w.data.y[lo:hi], dense[lo:hi], batch_size=64)
    assert (parts.n, parts.correct, parts.agree) == (whole.n, whole.correct, whole.agree)
    assert abs(parts.loss_sum - whole.loss_sum) <= 1e-9 * abs(whole.loss_sum)


def test_logit_shift_columns():
    dense = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    pruned = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    s = sums_from_logits(pruned, dense, None).metrics()
    assert abs(s["logit_cosine"] - 0.5) < 1e-12          # cosines 1 and 0
    assert abs(s["logit_rel_l2"] - (2 / 26) ** 0.5) < 1e-12
    same = sums_from_logits(dense, dense, None).metrics()
    assert same["logit_cosine"] == 1.0 and same["logit_rel_l2"] == 0.0


def test_scan_logit_columns_agree_with_the_diagnosis(workloads):
    """Two independent computations of the same quantity: the scan's sums and the diagnosis's streamed stats."""
    from analysis.diagnostics.diagnosis import diagnose
    from analysis.sensitivity.config import ScanConfig
    from analysis.sensitivity.driver import scan

    w = workloads["digits-mlp"]
    config = ScanConfig(sparsities=(0.7,), layers=("fc2",))
    row = scan(w, config).table.query("sparsity == 0.7").iloc[0]
    shift = diagnose(w, config, recalibration=False).shift
    logits = shift[(shift.observed == "logits") & (shift.sparsity == 0.7)].iloc[0]
    assert abs(row["logit_cosine"] - logits["cosine"]) < 1e-5
    assert abs(row["logit_rel_l2"] - logits["rel_l2"]) < 1e-5


@pytest.mark.parametrize("labelled", [True, False])
def test_sums_per_variant_equal_one_variant_at_a_time(labelled):
    g = torch.Generator().manual_seed(3)
    dense = torch.randn(20, 7, generator=g)
    variants = torch.stack([dense, dense + 0.3 * torch.randn(20, 7, generator=g), torch.randn(20, 7, generator=g)])
    labels = torch.randint(0, 7, (20,), generator=g) if labelled else None
    for stacked, alone in zip(sums_per_variant(variants, dense, labels),
                              [sums_from_logits(v, dense, labels) for v in variants]):
        assert (stacked.n, stacked.correct, stacked.agree, stacked.labelled) == \
            (alone.n, alone.correct, alone.agree, alone.labelled)
        for key in ("loss_sum", "kl_sum", "cos_sum", "diff_sq_sum", "ref_sq_sum"):
            assert getattr(stacked, key) == pytest.approx(getattr(alone, key), rel=1e-12, abs=1e-12), key
    assert sums_per_variant(variants, dense, labels)[0].diff_sq_sum == 0.0


def test_models_returning_dicts_are_read_by_their_logits():
    from torch import nn

    class DictNet(nn.Module):
        def __init__(self, keys: tuple[str, ...]) -> None:
            super().__init__()
            self.fc, self.keys = nn.Linear(4, 3), keys

        def forward(self, x):
            out = {k: self.fc(x) if k in ("logits", "out") else x for k in self.keys}
            return out

    x = torch.randn(5, 4)
    for keys in (("features", "logits"), ("out",)):
        model = DictNet(keys)
        torch.testing.assert_close(predict(model, x, batch_size=2), model.fc(x))
    with pytest.raises(TypeError, match="dict of features, scores"):
        predict(DictNet(("features", "scores")), x)


def test_a_single_logit_is_the_binary_case():
    from analysis.core.metrics import as_class_scores

    z = torch.tensor([[2.0], [-1.0], [0.5]])
    scores = as_class_scores(z)
    torch.testing.assert_close(scores.softmax(-1)[:, 1], torch.sigmoid(z[:, 0]))
    torch.testing.assert_close(as_class_scores(z[:, 0]), scores)
    flipped = sums_from_logits(as_class_scores(-z), scores, torch.tensor([1, 0, 1]))
    assert flipped.agree == 0 and flipped.correct == 0 and flipped.kl_sum > 0
    same = sums_from_logits(scores, scores, torch.tensor([1, 0, 1]))
    assert same.agree == 3 and same.correct == 3
    expected = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], torch.tensor([1.0, 0.0, 1.0]),
                                                                     reduction="sum")
    assert abs(same.loss_sum - float(expected)) < 1e-5


@pytest.mark.parametrize("task", ["classification", "causal-lm"])
def test_sums_over_blocks_of_predictions_equal_the_sums_in_one_block(monkeypatch, task):
    """A vocabulary's scores are measured block by block of predictions; the blocks change no count and no sum
    beyond float64 rounding (padding and the last position of a causal LM's sequences still never count)."""
    from analysis.core import metrics

    g = torch.Generator().manual_seed(5)
    shape = (6, 40) if task == "classification" else (3, 5, 40)
    dense = torch.randn(*shape, generator=g)
    variants = torch.stack([dense + s * torch.randn(*shape, generator=g) for s in (0.0, 0.5, 3.0)])
    labels = torch.randint(0, 40, shape[:-1], generator=g)
    if task == "causal-lm":
        labels[:, -1] = -100
        labels[0, 2:] = -100  # a padded sequence
    whole = sums_per_variant(variants, dense, labels, task)
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 3 * 40 * 2)  # two predictions of three variants a block
    assert len(metrics.row_blocks(5, 3 * 40)) == 3
    for blocked, one in zip(sums_per_variant(variants, dense, labels, task), whole):
        assert (blocked.n, blocked.correct, blocked.agree, blocked.lost, blocked.gained) == \
            (one.n, one.correct, one.agree, one.lost, one.gained)
        for key in ("loss_sum", "kl_sum", "cos_sum", "diff_sq_sum", "ref_sq_sum", "loss_sq_sum", "kl_sq_sum"):
            assert getattr(blocked, key) == pytest.approx(getattr(one, key), rel=1e-12, abs=1e-12), key
    assert whole[0].n == (6 if task == "classification" else 3 * 4 - 2)
    assert whole[0].kl_sum == 0.0 and whole[0].cos_sum == whole[0].n
