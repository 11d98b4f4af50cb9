"""Data specs -> an ``EvalData`` in memory.

Data specs
    ``sample:digits``                    the held-out split of the samples (``sample:digits-train``: training)
    ``data.pt`` / ``data.npz``           tensors ``x`` and optionally ``y`` (a bare tensor is ``x``)
    ``folder/``                          an ``ImageFolder`` tree, resized to ``input_size``
    ``images.zip``                       a zip archive of such a tree (extracted safely to a temporary folder)
    ``random:CxHxW``                     ``count`` seeded Gaussian inputs, no labels

Every way a spec or a file can be wrong raises ``SpecError`` with a message that names the file and the fix.
"""

from __future__ import annotations

import math
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from analysis.core.data import EvalData
from analysis.workload import samples
from analysis.workload.errors import SpecError, short_error, torch_load_problem
from analysis.workload.files import check_unpacked_file, load_plain, sniff_kind
from analysis.workload.uploads import UploadError, kind_words, safe_extract, sniff

MAX_RANDOM_VALUES = 1 << 28  # 1 GiB of float32: a typo such as random:3x2240x2240 must not exhaust memory
RANDOM_COUNT = 256  # random inputs drawn when no count is given


def parse_shape(text: str, count: int) -> tuple[int, ...]:
    """The shape of ``random:CxHxW`` (``text`` is ``CxHxW``) for ``count`` samples; refused when malformed or too large."""
    parts = text.lower().split("x")
    if not parts or not all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts):
        raise SpecError(f"random data needs a shape like random:3x32x32, got random:{text}")
    shape = tuple(int(p) for p in parts)
    if count * math.prod(shape) > MAX_RANDOM_VALUES:
        raise SpecError(f"random:{text} with {count} samples is {count * math.prod(shape):,} values, more than the "
                        f"limit of {MAX_RANDOM_VALUES:,}; use a smaller shape or --count")
    return shape


DATA_FORMATS = "a torch.save file of tensors x and y, a numpy .npz with arrays x and y, or a .zip of an image folder"


def _from_tensor_file(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    if path.stat().st_size == 0:
        raise SpecError(f"data file {path} is empty")
    kind = sniff_kind(path)
    if kind == "unknown" and zipfile.is_zipfile(path):
        raise SpecError(f"data {path} is a zip archive that holds no images: expected {DATA_FORMATS} "
                        "(one sub-folder per class, e.g. cat/001.png)")
    if kind not in ("npz", "torch-save", "pickle"):
        raise SpecError(f"data {path} is not a torch.save or .npz file (its content is {kind_words(kind)}); "
                        f"expected {DATA_FORMATS}")
    check_unpacked_file(path, kind, "data")
    try:
        if kind == "npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            obj = {k: torch.from_numpy(v) for k, v in arrays.items()}
        else:
            obj = load_plain(path)
    except Exception as exc:  # noqa: BLE001
        problem = torch_load_problem(exc) if kind != "npz" else short_error(exc)
        hint = " (numpy arrays: convert them with torch.from_numpy before torch.save, or save them with numpy.savez)"
        raise SpecError(f"data {path} cannot be read: {problem}; expected {DATA_FORMATS}"
                        + (hint if "numpy" in problem else "")) from None
    if isinstance(obj, torch.Tensor):
        obj = {"x": obj}
    if not isinstance(obj, dict) or "x" not in obj:
        raise SpecError(f"{path} must hold a tensor or a dict with 'x' (inputs) and optionally 'y' (labels)")
    x, y = obj["x"], obj.get("y")
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise SpecError(f"'x' in {path} must be a tensor with a batch dimension, got shape {getattr(x, 'shape', None)}")
    for name, t in (("x", x), ("y", y)):
        if isinstance(t, torch.Tensor) and (t.layout != torch.strided or t.device.type != "cpu"):
            what = "a meta tensor (shapes without values)" if t.device.type == "meta" else f"a {t.layout} tensor"
            raise SpecError(f"'{name}' in {path} is {what}; save a plain dense tensor (x.to_dense().cpu())")
    x = _input_dtype(x)
    if y is not None:
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point() and not torch.equal(y, y.round()):
            raise SpecError(f"'y' in {path} must be a 1-D tensor of integer class labels")
        if len(y) != len(x):
            raise SpecError(f"{path} has {len(x)} inputs but {len(y)} labels")
        y = y.long()
    return x, y


def _input_dtype(x: torch.Tensor) -> torch.Tensor:
    """Inputs as a float32 model takes them: floats (and bytes, booleans) as float32; other integers (token ids
    for an embedding) stay integers, as int64."""
    if x.is_floating_point() or x.dtype in (torch.uint8, torch.bool):
        return x.float()
    if x.is_complex():
        raise SpecError(f"complex inputs ({x.dtype}) are not supported")
    return x.long()


NORMALIZATIONS = ("imagenet", "none")


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _from_image_folder(path: Path, input_size: int, normalize: str, count: int | None,
                       shown: str | None = None, channels: int = 3) -> EvalData:
    """The images of an ``ImageFolder`` tree, in colour or (``channels=1``) grayscale; messages name it ``shown``
    (a zip archive it was extracted from)."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    def named(text: object) -> str:
        text = str(text).replace(str(path), shown) if shown else str(text)
        return short_error(Exception(text))

    steps = [T.Grayscale(1)] if channels == 1 else []
    steps += [T.Resize(input_size), T.CenterCrop(input_size), T.ToTensor()]
    if normalize == "imagenet":
        steps.append(T.Normalize(IMAGENET_MEAN, IMAGENET_STD) if channels != 1 else
                     T.Normalize((sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)))
    try:
        ds = ImageFolder(str(path), transform=T.Compose(steps))
    except (FileNotFoundError, RuntimeError) as exc:
        raise SpecError(f"{shown or path} is not an image folder (one sub-folder per class holding images, e.g. "
                        f"cat/001.png): {named(exc)}") from None
    chosen = range(len(ds)) if count is None or count >= len(ds) else _spread(len(ds), count)
    xs, ys = [], []
    for i in chosen:
        try:
            img, label = ds[i]
        except Exception as exc:  # noqa: BLE001 - a broken image
            raise SpecError(f"cannot read image {named(ds.samples[i][0])}: {named(exc)}") from None
        xs.append(img)
        ys.append(label)
    return EvalData(torch.stack(xs), torch.tensor(ys), str(path), ds.classes)


def _spread(total: int, count: int, seed: int = 0) -> list[int]:
    """``count`` of ``total`` indices, seeded and in order: a folder lists its images class by class, so its
    first ``count`` would be the first classes only."""
    gen = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(total, generator=gen)[:count].tolist())


def is_image_zip(path: Path) -> bool:
    if path.stat().st_size == 0:
        return False
    try:
        return sniff(path) == "images-zip"
    except UploadError as exc:
        raise SpecError(f"data {path}: {exc}") from None


def _from_image_zip(path: Path, input_size: int, normalize: str, count: int | None, channels: int = 3) -> EvalData:
    """Extract the archive safely into a temporary folder, read the images into memory, remove the folder."""
    with tempfile.TemporaryDirectory(prefix="prunescope-images-") as tmp:
        try:
            root = safe_extract(path, Path(tmp))
        except UploadError as exc:
            raise SpecError(f"data {path}: {exc}") from None
        data = _from_image_folder(root, input_size, normalize, count, shown=str(path), channels=channels)
    return EvalData(data.x, data.y, str(path), data.class_names)


def load_data(spec: str, count: int | None = None, input_size: int = 224, normalize: str = "imagenet",
              seed: int = 0, channels: int | None = None) -> EvalData:
    """The eval set a spec names; ``count`` keeps the first ``count`` samples (random data: how many).

    Example::

        >>> from analysis import load_data
        >>> data = load_data("random:3x32x32", count=8)
        >>> tuple(data.x.shape), data.labelled
        ((8, 3, 32, 32), False)
    """
    spec = spec.strip()
    if "\x00" in spec:
        raise SpecError(f"the data spec {spec!r} contains a NUL character")
    if normalize not in NORMALIZATIONS:
        raise SpecError(f"unknown normalisation {normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
    if not isinstance(input_size, int) or input_size <= 0:
        raise SpecError(f"input size must be a positive number of pixels, got {input_size!r}")
    if count is not None and count <= 0:
        raise SpecError(f"count must be positive, got {count}")
    if spec in ("sample:digits", "sample:digits-train"):
        x_train, y_train, x_test, y_test = samples.digits_split()
        x, y = (x_test, y_test) if spec == "sample:digits" else (x_train, y_train)
        data = EvalData(x, y, spec, [str(i) for i in range(10)])
    elif spec.startswith("random:"):
        count = count or RANDOM_COUNT
        shape = parse_shape(spec.removeprefix("random:"), count)
        gen = torch.Generator().manual_seed(seed)
        return EvalData(torch.randn((count, *shape), generator=gen), None, f"{spec}@{count}")
    elif spec.startswith("sample:"):
        raise SpecError(f"no bundled data {spec!r}; use sample:digits or sample:digits-train")
    else:
        path = Path(spec)
        if not path.exists():
            raise SpecError(f"data {spec} does not exist (a tensor file, an image folder, sample:digits or random:CxHxW)")
        if path.is_dir():
            return _from_image_folder(path, input_size, normalize, count, channels=channels or 3)
        if is_image_zip(path):
            return _from_image_zip(path, input_size, normalize, count, channels=channels or 3)
        x, y = _from_tensor_file(path)
        data = EvalData(x, y, spec)
    if count is not None:
        data = data.head(count)
    return data
