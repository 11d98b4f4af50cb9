"""The bundled sample models and the digits data they were trained on.

The samples are small networks trained on scikit-learn's digits (8x8 grey images, 10 classes), which ships
inside the scikit-learn package, so everything here works offline. The split is fixed by a seed so that the
held-out part (``sample:digits``) is the same on every machine.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _sample_dir() -> Path:
    """Where the samples' weights lie: ``analysis/sample_models/`` in an installed package (package data), else
    ``sample_models/`` at the top of the checkout."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "sample_models"
    return installed if installed.is_dir() else package.parent / "sample_models"


SAMPLE_DIR = _sample_dir()
SPLIT_SEED = 0
TEST_FRACTION = 0.25


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images (1797, 8, 8) with values 0-16, and labels.

    Read from the file scikit-learn ships, as ``sklearn.datasets.load_digits`` reads it, but without importing
    scikit-learn (most of a second on every command that opens the samples' data)."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits as from_sklearn

        digits = from_sklearn()
        return digits.images, digits.target
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def digits_split(seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(x_train, y_train, x_test, y_test)``: images as float32 (N, 1, 8, 8) in [0, 1], labels int64."""
    images, target = load_digits()
    x = images.astype(np.float32) / 16.0
    y = target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * TEST_FRACTION))
    test, train = order[:n_test], order[n_test:]
    as_x = lambda idx: torch.from_numpy(x[idx]).unsqueeze(1)  # noqa: E731
    as_y = lambda idx: torch.from_numpy(y[idx])  # noqa: E731
    return as_x(train), as_y(train), as_x(test), as_y(test)


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class DigitsCNN(nn.Module):
    """Three conv-BN-ReLU blocks and a linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.block1 = _conv_bn_relu(1, 16)
        self.block2 = _conv_bn_relu(16, 32)
        self.pool = nn.MaxPool2d(2)
        self.block3 = _conv_bn_relu(32, 64)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block2(self.block1(x)))
        x = self.avgpool(self.block3(x))
        return self.fc(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    """A residual block: two 3x3 convolutions and an identity (or 1x1 projection) skip connection."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class DigitsResNet(nn.Module):
    """A small ResNet: a stem, two residual stages and a linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(1, 16)
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class DigitsMLP(nn.Module):
    """Linear layers only: 64 -> 128 -> 64 -> 10."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc3(self.relu(self.fc2(self.relu(self.fc1(x)))))


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "digits-cnn": DigitsCNN,
    "digits-resnet": DigitsResNet,
    "digits-mlp": DigitsMLP,
}


@dataclass(frozen=True)
class SampleInfo:
    """What the metadata file next to a sample's weights says."""

    name: str
    architecture: str
    test_accuracy: float
    split_seed: int
    weights: Path


def sample_names() -> list[str]:
    """The bundled samples whose weights are present."""
    return [name for name in ARCHITECTURES if (SAMPLE_DIR / f"{name}.pt").exists()]


def sample_info(name: str) -> SampleInfo:
    meta = json.loads((SAMPLE_DIR / f"{name}.json").read_text())
    return SampleInfo(name, meta["architecture"], meta["test_accuracy"], meta["split_seed"], SAMPLE_DIR / f"{name}.pt")


def load_sample(name: str) -> nn.Module:
    """Build a bundled sample and load its committed weights (a plain state dict, loaded weights-only)."""
    if name not in ARCHITECTURES:
        raise KeyError(name)
    model = ARCHITECTURES[name]()
    model.load_state_dict(torch.load(SAMPLE_DIR / f"{name}.pt", map_location="cpu", weights_only=True))
    return model.eval()
