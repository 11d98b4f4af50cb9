"""Train the bundled sample models on scikit-learn's digits and write their weights and metadata.

Run from the repository root: ``python sample_models/train.py``. Seeds are fixed; the held-out split is the
one ``sample:digits`` loads (``analysis.samples.digits_split``).
"""

from __future__ import annotations

import json

import torch
from torch import nn

from analysis.workload.samples import ARCHITECTURES, SAMPLE_DIR, SPLIT_SEED, digits_split

EPOCHS = {"digits-cnn": 40, "digits-resnet": 40, "digits-mlp": 80}


def train(name: str, seed: int = 0) -> float:
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = digits_split()
    model = ARCHITECTURES[name]()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS[name])
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(EPOCHS[name]):
        model.train()
        for idx in torch.randperm(len(x_train), generator=gen).split(64):
            # Small random shifts make the convolutional samples generalise better.
            xb = x_train[idx]
            if name != "digits-mlp":
                dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
                xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            opt.zero_grad()
            loss_fn(model(xb), y_train[idx]).backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    torch.save(model.state_dict(), SAMPLE_DIR / f"{name}.pt")
    meta = {
        "architecture": f"{type(model).__name__}: {model.__doc__.strip().splitlines()[0]}",
        "test_accuracy": round(acc, 4),
        "split_seed": SPLIT_SEED,
        "train_samples": len(x_train),
        "test_samples": len(x_test),
        "epochs": EPOCHS[name],
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__.split("+")[0],
    }
    (SAMPLE_DIR / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return acc


if __name__ == "__main__":
    torch.set_num_threads(1)
    for sample in ARCHITECTURES:
        print(f"{sample}: test accuracy {train(sample):.4f}")
