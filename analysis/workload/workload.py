"""A model spec and a data spec -> a ``Workload``: a model in eval mode, an eval set, and their shapes, checked to
fit each other before any work is done."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from analysis.core.data import IGNORE, EvalData, tensor_bytes
from analysis.core.metric_table import CAUSAL_LM, CLASSIFICATION, ENCODER
from analysis.core.metrics import class_scores
from analysis.workload.data import is_image_zip, load_data
from analysis.workload.errors import SpecError, short_error
from analysis.workload.hf import TextModel, folder_fingerprint, with_task
from analysis.workload.models import load_model
from analysis.workload.text import is_text_file, load_text_data


@dataclass
class Workload:
    """A model ready to analyse, with the eval set it is measured on."""

    model: nn.Module
    data: EvalData
    model_spec: str
    num_classes: int
    input_shape: tuple[int, ...]
    meta: dict = field(default_factory=dict)
    code_fp: str = ""
    output_shape: tuple[int, ...] = ()  # one sample's outputs; () for (num_classes,)

    @property
    def input_dtype(self) -> str:
        """The inputs' dtype: ``float32``, or ``int64`` for token ids."""
        return str(self.data.x.dtype).removeprefix("torch.")

    @property
    def task(self) -> str:
        """What the model's outputs are (``metric_table.TASKS``)."""
        return self.data.task

    def fingerprint(self) -> str:
        """A hash of what decides the model's outputs: its weights and buffers, its module tree and the code it
        was loaded from (``code_fp``), so that the same weights in an edited ``forward`` are another model."""
        h = hashlib.sha256()
        for name, t in sorted(self.model.state_dict().items()):
            if isinstance(t, torch.Tensor):
                h.update(name.encode())
                h.update(tensor_bytes(t.detach().float()))
        h.update(re.sub(r" at 0x[0-9a-f]+", "", repr(self.model)).encode())
        h.update(self.code_fp.encode())
        return h.hexdigest()[:16]


def check_fit(model: nn.Module, data: EvalData, model_spec: str = "the model") -> int:
    """Run one small batch through the model; return its class count or raise a ``SpecError`` naming both sides."""
    return fit_shapes(model, data, model_spec)[0]


def fit_shapes(model: nn.Module, data: EvalData, model_spec: str = "the model") -> tuple[int, tuple[int, ...]]:
    """``check_fit``'s class count (a causal LM's vocabulary, an encoder's embedding size) and one sample's output
    shape."""
    if len(data) == 0:
        raise SpecError(f"the data {data.spec} holds no samples")
    if not torch.isfinite(data.x).all():
        raise SpecError(f"the data {data.spec} contains NaN or infinite values")
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise SpecError(f"{model_spec} has NaN or infinite values in {name}")
    batch = data.x[:2]
    try:
        with torch.inference_mode():
            out = class_scores(model(batch))
    except Exception as exc:  # noqa: BLE001 - any failure here is a mismatch between the two sides
        fixed = "Guard failed" in str(exc) and ".size()[0]" in str(exc)
        hint = ("; the program was exported for a fixed batch size: export it with a dynamic one, torch.export."
                "export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},))") if fixed else ""
        raise SpecError(f"{model_spec} cannot run on {data.spec}: inputs of shape {list(data.x.shape[1:])} "
                        f"({data.x.dtype}) failed with {type(exc).__name__}: {short_error(exc)}{hint}") from None
    try:
        with torch.inference_mode():
            model(data.x[:1])
    except Exception as exc:  # noqa: BLE001
        raise SpecError(f"{model_spec} runs on a batch of {len(batch)} but not on a batch of 1 "
                        f"({short_error(exc, 120)}); export it with a dynamic batch dimension (torch.export "
                        "dynamic_shapes, Dim('batch'))") from None
    _check_output(out, batch, data.task, model_spec)
    if not torch.isfinite(out).all():
        raise SpecError(f"{model_spec} returns NaN or infinite outputs on the first inputs of {data.spec}: the "
                        "metrics need finite class scores; check the model's forward (a division by zero, a log "
                        "of zero) or its input scaling")
    num_classes = int(out.shape[-1])
    labels = data.y[data.y != IGNORE] if data.y is not None and data.task == CAUSAL_LM else data.y
    if labels is not None and len(labels) and data.task != ENCODER:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise SpecError(f"the labels of {data.spec} run from {low} to {high}, but {model_spec} has "
                            f"{num_classes} classes (0 to {num_classes - 1})")
    return num_classes, tuple(out.shape[1:])


_OUTPUTS = {CLASSIFICATION: "(batch, classes) class scores", CAUSAL_LM: "(batch, positions, vocabulary) scores",
            ENCODER: "(batch, features) embeddings"}


def _check_output(out: torch.Tensor, batch: torch.Tensor, task: str, model_spec: str) -> None:
    """The outputs have the task's shape: (batch, classes); a causal LM's (batch, positions, vocabulary)."""
    dims = 3 if task == CAUSAL_LM else 2
    if out.dim() != dims or out.shape[0] != batch.shape[0] or (dims == 3 and out.shape[1] != batch.shape[1]):
        raise SpecError(f"{model_spec} returned outputs of shape {list(out.shape)} for {len(batch)} inputs; "
                        f"expected {_OUTPUTS[task]}")


def load_workload(model_spec: str, data_spec: str, count: int | None = None, input_size: int = 224,
                  normalize: str = "imagenet", trust_code: bool = False, trust_pickle: bool = False,
                  seq_len: int | None = None, task: str | None = None) -> Workload:
    """Load a model and its eval set and check that they fit before any work is done (``trust_code``: see
    ``load_model``). A Hugging Face model (``hf:FOLDER``) reads text, or token ids, cut to ``seq_len`` tokens
    (default 128, or the model's positions if fewer);
    ``task`` overrides the task its configuration names (``hf:FOLDER@TASK`` too).

    Example::

        >>> from analysis import load_workload
        >>> workload = load_workload("sample:digits-mlp", "sample:digits", count=64)
        >>> workload.num_classes, workload.input_shape, len(workload.data)
        (10, (1, 8, 8), 64)
    """
    model_spec = with_task(model_spec, task)
    model = load_model(model_spec, trust_code=trust_code or trust_pickle)
    data = load_eval_data(model, model_spec, data_spec, count, input_size, normalize, seq_len=seq_len)
    try:
        num_classes, out_shape = fit_shapes(model, data, model_spec)
    except SpecError:
        fitted = _grayscale_fit(model, model_spec, data, data_spec, count, input_size, normalize)
        if fitted is None:
            raise
        data, (num_classes, out_shape) = fitted
    return Workload(model, data, model_spec, num_classes, tuple(data.x.shape[1:]), code_fp=code_fingerprint(model_spec),
                    output_shape=out_shape)


def load_eval_data(model: nn.Module, model_spec: str, data_spec: str, count: int | None = None, input_size: int = 224,
                   normalize: str = "imagenet", channels: int | None = None,
                   seq_len: int | None = None) -> EvalData:
    """The data ``data_spec`` names, read for ``model``: text (or token ids) with a Hugging Face model's tokenizer
    in ``seq_len``-token sequences, anything else with ``load_data``."""
    if isinstance(model, TextModel):
        return load_text_data(data_spec, model, model_spec, seq_len, count)
    if is_text_file(data_spec):
        raise SpecError(f"{data_spec} is text: text is read with a Hugging Face model's tokenizer (--model "
                        "hf:FOLDER); other models take tensors (a .pt/.npz file of token ids)")
    return load_data(data_spec, count=count, input_size=input_size, normalize=normalize, channels=channels)


def seq_len_of(input_shape: tuple[int, ...] | list[int], dtype: str = "int64") -> int | None:
    """The sequence length token inputs of this shape were read with (their width), for reading more text the
    same way (a scan's eval set again, calibration or training text); ``None`` (the default) for other inputs."""
    return int(input_shape[0]) if dtype == "int64" and len(input_shape) == 1 else None


def image_channels(input_shape: tuple[int, ...] | list[int]) -> int | None:
    """The channels images of this input shape were read with (1: grayscale), for reading more images the same
    way (calibration or training folders, a scan's eval set again); ``None`` when the inputs are not square
    images, as an image folder gives them."""
    shape = tuple(input_shape)
    return shape[0] if len(shape) == 3 and shape[0] in (1, 3) and shape[1] == shape[2] else None


def _grayscale_fit(model: nn.Module, model_spec: str, data: EvalData, data_spec: str, count: int | None,
                   input_size: int, normalize: str) -> tuple[EvalData, tuple[int, tuple[int, ...]]] | None:
    """A one-channel model (MNIST-like) on a folder of colour images: the images read in grayscale and the
    class count, or ``None`` when the data are not such images or the model does not take them either."""
    path = Path(data_spec)
    if not (data.x.dim() == 4 and data.x.shape[1] == 3 and path.exists()
            and (path.is_dir() or is_image_zip(path))):
        return None
    gray = load_data(data_spec, count=count, input_size=input_size, normalize=normalize, channels=1)
    try:
        return gray, fit_shapes(model, gray, model_spec)
    except SpecError:
        return None


def code_fingerprint(spec: str) -> str:
    """A hash of the code a model spec runs, beyond its weights: the ``.py`` file of ``file.py:factory``, the whole
    file of a TorchScript, ``.pt2``, ONNX or pickled model (their code is inside), the name of a sample or a
    torchvision architecture. A ``.py`` file's own imports are not followed."""
    spec = spec.strip()
    if spec.startswith(("sample:", "torchvision:")):
        return spec.partition("=")[0]
    if spec.startswith("hf:"):
        return folder_fingerprint(spec)
    match = re.match(r"^(.+\.py):([A-Za-z_]\w*)(=.+)?$", spec)
    path, label = (Path(match.group(1)), match.group(2)) if match else (Path(spec), "")
    h = hashlib.sha256(label.encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]


DEFAULT_DATA = {"sample:": "sample:digits", "torchvision:": "random:3x224x224"}


def default_data(model_spec: str) -> str | None:
    """Inputs a model can be traced, calibrated and verified on when no data is named: the samples' digits for a
    sample, ImageNet-sized random inputs for a torchvision architecture; ``None`` otherwise."""
    return next((data for prefix, data in DEFAULT_DATA.items() if model_spec.startswith(prefix)), None)
