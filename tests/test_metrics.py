"""Metric sums: exact, additive over shards, label-free when there are no labels."""

import torch

from analysis.metrics import Sums, evaluate, predict, sums_from_logits


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
