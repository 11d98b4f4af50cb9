"""Turn a model spec and a data spec into a ``Workload``: a model in eval mode, an eval set, and their shapes.

Model specs
    ``sample:NAME``                      a bundled sample (``sample_models/``)
    ``torchvision:ARCH[=weights]``       a torchvision architecture, random init or a state dict
    ``model.onnx``                       an ONNX graph, run in ONNX Runtime (``analysis.onnx_model``)
    ``file.py:factory[=weights]``        your own code builds the model; weights are a state dict (a program)
    ``model.pt`` / ``model.ts``          TorchScript (a program)
    ``model.pt2``                        a ``torch.export`` program (a program; its archive is checked first)
    ``model.pt`` (pickled nn.Module)     a program: unpickling runs code

Programs run code from their file and load only with ``trust_code=True`` (the CLI's ``--trust-code``). State
dicts (``.pt``/``.pth``/``.bin``) are read with ``torch.load(weights_only=True)``; ``.safetensors`` too.

Data specs
    ``sample:digits``                    the held-out split of the samples (``sample:digits-train``: training)
    ``data.pt`` / ``data.npz``           tensors ``x`` and optionally ``y`` (a bare tensor is ``x``)
    ``folder/``                          an ``ImageFolder`` tree, resized to ``input_size``
    ``images.zip``                       a zip archive of such a tree (extracted safely to a temporary folder)
    ``random:CxHxW``                     ``count`` seeded Gaussian inputs, no labels

Every way a spec or a file can be wrong raises ``SpecError`` with a message that names the file and the fix.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
import types
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from analysis import samples
from analysis.uploads import kind_words, zip_kind


class SpecError(ValueError):
    """A model or data spec that cannot be turned into a workload; the message says why and what to do."""


@dataclass
class EvalData:
    """An eval set held in memory: inputs ``x`` (N, ...) and labels ``y`` (N,) or ``None``."""

    x: torch.Tensor
    y: torch.Tensor | None
    spec: str = ""
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labelled(self) -> bool:
        return self.y is not None

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(_buffer(self.x))
        if self.y is not None:
            h.update(_buffer(self.y))
        return h.hexdigest()[:16]


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

    @property
    def input_dtype(self) -> str:
        """The inputs' dtype: ``float32``, or ``int64`` for token ids."""
        return str(self.data.x.dtype).removeprefix("torch.")

    def fingerprint(self) -> str:
        """A hash of what decides the model's outputs: its weights and buffers, its module tree and the code it
        was loaded from (``code_fp``), so that the same weights in an edited ``forward`` are another model."""
        h = hashlib.sha256()
        for name, t in sorted(self.model.state_dict().items()):
            if isinstance(t, torch.Tensor):
                h.update(name.encode())
                h.update(_buffer(t.detach().float()))
        h.update(re.sub(r" at 0x[0-9a-f]+", "", repr(self.model)).encode())
        h.update(self.code_fp.encode())
        return h.hexdigest()[:16]


def _buffer(t: torch.Tensor) -> memoryview:
    """A tensor's bytes for hashing, read in place (no copy when the tensor is already contiguous on the CPU)."""
    return memoryview(t.detach().contiguous().cpu().numpy()).cast("B")


# ----------------------------------------------------------------------------------------------------- models


def load_plain(source: object) -> object:
    """``torch.load(weights_only=True)`` on the CPU: tensors and plain containers only, never code. torch's
    warnings about the file (sparse tensors validated, ...) stay out of the user's one-line messages."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(source, map_location="cpu", weights_only=True)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SpecError(f"weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise SpecError(f"weights file {path} is empty")
    kind = _sniff(path)
    if path.suffix == ".safetensors" or kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - any parse failure is the file's fault
            raise SpecError(f"{path} is not a readable safetensors file: {_short(exc)}") from None
    if kind not in ("torch-save", "pickle"):
        raise SpecError(f"{path} is not a state-dict file (torch.save or .safetensors); its content is "
                        f"{kind_words(kind)}. Save the weights with torch.save(model.state_dict(), path)")
    _check_unpacked(path, kind, "weights file")
    try:
        obj = load_plain(path)
    except Exception as exc:  # noqa: BLE001
        raise SpecError(f"{path} is not a state dict that loads without running code: {_torch_load_problem(exc)}; "
                        "save it with torch.save(model.state_dict(), path)") from None
    state = _unwrap_checkpoint(obj)
    if state is None:
        raise SpecError(f"{path} holds {type(obj).__name__}, not a state dict of tensors" + (
            f" (its keys: {', '.join(map(str, list(obj)[:6]))})" if isinstance(obj, dict) else ""))
    return state


CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "weights", "params")


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap_checkpoint(obj: object) -> dict[str, torch.Tensor] | None:
    """The state dict in a training checkpoint: the object itself, or its first entry under a usual key
    (``{"state_dict": ..., "epoch": ...}``, ``{"model": ...}``, ``{"model_state_dict": ...}``); ``None`` if none."""
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, dict):
        for key in CHECKPOINT_KEYS:
            if _is_state_dict(obj.get(key)):
                return obj[key]
    return None


WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")  # DataParallel/DDP, torch.compile, Lightning


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Fill ``model`` from ``state``; keys saved from a wrapper (DDP's ``module.``, ``torch.compile``'s
    ``_orig_mod.``, Lightning's ``model.``) lose that prefix when every key has it and the model's do not."""
    own = model.state_dict().keys()
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state) and not all(k.startswith(prefix) for k in own):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise SpecError(f"the weights in {source} do not fit the architecture: {_short(exc)}") from None
    return model


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(_ANSI.sub("", str(exc)).split())
    return text if len(text) <= limit else text[:limit] + " ..."


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _torch_load_problem(exc: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` refused, in a few words: torch's own text suggests loading without
    ``weights_only``, which runs code from the file, and is never passed on."""
    text = _ANSI.sub("", str(exc))
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds Python objects other than tensors (found {found.group(1)})"
    if "Weights only load failed" in text or isinstance(exc, KeyError):
        return "it is damaged, or not a torch.save file"
    return _short(exc)


def _sniff(path: Path) -> str:
    """What a file holds, read from its bytes (``uploads.sniff``); a damaged zip archive is ``damaged-zip``."""
    from analysis.uploads import UploadError, sniff

    try:
        return sniff(path)
    except UploadError:
        return "damaged-zip"


def _check_unpacked(path: Path, kind: str, what: str) -> None:
    """An archive whose content would unpack past the limit is refused from its headers (``uploads.check_unpacked``)."""
    from analysis.uploads import UploadError, check_unpacked

    try:
        check_unpacked(path, kind)
    except UploadError as exc:
        raise SpecError(f"{what} {exc}") from None


def _torchvision(arch: str, weights: str | None) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        close = [n for n in names if arch.lower()[:4] in n][:5]
        raise SpecError(f"torchvision has no architecture {arch!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    if weights is None:
        return torchvision.models.get_model(arch, weights=None)
    state = _read_state_dict(Path(weights))
    kwargs = {}
    if arch.startswith(("googlenet", "inception")):
        kwargs["aux_logits"] = any("aux" in k for k in state)
        kwargs["init_weights"] = False
    num_classes = _guess_num_classes(torchvision.models.get_model, arch, kwargs, state)
    if num_classes:
        kwargs["num_classes"] = num_classes
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    return _load_state(model, state, weights)


def _guess_num_classes(build: Callable[..., nn.Module], arch: str, kwargs: dict,
                       state: dict[str, torch.Tensor]) -> int | None:
    """The class count of the weights in ``state``: the output size of the architecture's classifier, its last
    Linear or Conv weight (auxiliary heads left out; a 1x1 convolution in SqueezeNet's case), found in the
    architecture's own order, not the file's (safetensors sorts its keys). The architecture is built on the meta
    device: no memory, no initialisation."""
    with torch.device("meta"):
        own = build(arch, weights=None, **kwargs).state_dict()
    last = [k for k, v in own.items() if k.endswith("weight") and v.dim() >= 2 and "aux" not in k]
    if not last:
        return None
    found = [v for k, v in state.items() if k == last[-1] or k.endswith("." + last[-1])]
    return int(found[0].shape[0]) if found and found[0].dim() >= 2 else None


TRUST_HINT = "pass --trust-code if you trust where it came from (Python: trust_code=True)"


def _from_python_file(path: Path, factory: str, weights: str | None, trust_code: bool) -> nn.Module:
    if not path.is_file():
        raise SpecError(f"model file {path} does not exist")
    if not trust_code:
        raise SpecError(f"{path}:{factory} is Python code: building the model runs {path}. It is your own code? "
                        f"{TRUST_HINT[0].upper()}{TRUST_HINT[1:]}")
    spec = importlib.util.spec_from_file_location(f"prunescope_user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's code failed
        raise SpecError(f"importing {path} failed: {type(exc).__name__}: {_short(exc)}") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise SpecError(f"{path} has no callable {factory!r}")
    from analysis import usercode

    usercode.register(module)
    try:
        model = fn()
    except Exception as exc:  # noqa: BLE001 - the user's factory failed; nothing of ours runs inside it
        raise SpecError(f"{path}:{factory}() failed: {type(exc).__name__}: {_short(exc)}") from None
    if not isinstance(model, nn.Module):
        raise SpecError(f"{path}:{factory}() returned {type(model).__name__}, not a torch.nn.Module")
    return _load_state(model, _read_state_dict(Path(weights)), weights) if weights else model


def sniff_model_file(path: Path) -> str:
    """What a model file holds, read from its content (never its name): torchscript, export, onnx, pickle.

    Zip archives are told apart by ``uploads.zip_kind`` (a ``torch.save`` archive is read as ``pickle``)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            raise SpecError(f"{path} looks like a zip archive but is damaged or truncated") from None
        kind = {"torchscript": "torchscript", "export": "export", "torch-save": "pickle"}.get(zip_kind(names))
        if kind:
            return kind
        raise SpecError(f"{path} is a zip archive but not a TorchScript, torch.export or torch.save file")
    if head[:1] == b"\x80":
        return "pickle"
    if head[:1] == b"\x08":
        return "onnx"
    if _sniff(path) == "safetensors":
        return "safetensors"
    raise SpecError(f"{path} is not a model file Prunescope can read (TorchScript, .pt2, ONNX or a state dict)")


def _exported_module(path: Path) -> nn.Module:
    """The unlifted module of a ``torch.export`` program, read only once ``check_export_archive`` has passed. Its
    graph was captured in one mode and refuses ``train()``/``eval()``; those calls become no-ops so the rest of
    the engine can treat it as any module."""
    check_export_archive(path)
    module = torch.export.load(str(path)).module()
    module.train = types.MethodType(lambda self, mode=True: self, module)
    module.eval = types.MethodType(lambda self: self, module)
    return module


def check_export_archive(path: Path) -> None:
    """Refuse a ``torch.export`` archive that would unpickle anything: ``torch.export.load`` unpickles weights and
    constants marked ``use_pickle`` and custom objects, retries a failed safe load of sample inputs with
    ``weights_only=False``, and falls back to an older format read with pickle. A ``.pt2`` is read only when it is
    of the current format, every weight and constant is raw tensor bytes, and every pickled member loads with
    ``weights_only=True``."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            fmt = next((n for n in names if n.rsplit("/", 1)[-1] == "archive_format"), None)
            if fmt is None or "version" in names or z.read(fmt).strip() != b"pt2":
                raise SpecError(f"{path} is not a torch.export archive of the current format (older ones are "
                                "read with pickle); save it again with torch.export.save")
            root = fmt[: -len("archive_format")]
            for name in names:
                _check_export_member(z, name, name.removeprefix(root), path)
    except SpecError:
        raise
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, AttributeError, TypeError, NotImplementedError,
            RuntimeError) as exc:
        raise SpecError(f"{path} is a damaged torch.export archive: {_short(exc)}") from None


def _check_export_member(z: zipfile.ZipFile, name: str, inner: str, path: Path) -> None:
    """One member of a ``.pt2``: payload configs must not ask for pickle, pickled files must be plain data."""
    import io
    import json

    refuse = f"{path} is a torch.export archive that unpickles {{}} when loaded (unpickling runs code)"
    if inner.endswith(("_weights_config.json", "_constants_config.json")):
        config = json.loads(z.read(name)).get("config", {})
        for key, entry in config.items():
            if entry.get("use_pickle") or not str(entry.get("path_name", "")).startswith(("weight_", "tensor_")):
                raise SpecError(refuse.format(repr(key)) + "; export it with plain tensor weights, or to ONNX")
    elif inner.endswith((".pt", ".pkl")) or inner.startswith("data/sample_inputs/"):
        try:
            load_plain(io.BytesIO(z.read(name)))
        except Exception:  # noqa: BLE001 - anything that is not plain data is refused
            raise SpecError(refuse.format(repr(inner)) + "; export it again with tensor example inputs") from None


PROGRAMS = {"torchscript": "a TorchScript program", "export": "a torch.export program"}


def _from_model_file(path: Path, trust_code: bool) -> nn.Module:
    if not path.is_file():
        raise SpecError(f"model file {path} does not exist")
    if path.stat().st_size == 0:
        raise SpecError(f"model file {path} is empty")
    kind = sniff_model_file(path)
    if kind in PROGRAMS and not trust_code:
        raise SpecError(f"{path} is {PROGRAMS[kind]}: running it runs code from the file (it can read and write "
                        f"files). Export the model to ONNX to analyse it as data, or {TRUST_HINT}")
    if kind == "torchscript":
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise SpecError(f"{path} is a damaged TorchScript file: {_short(exc)}") from None
    if kind == "export":
        try:
            return _exported_module(path)
        except SpecError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise SpecError(f"{path} is a damaged torch.export program: {_short(exc)}") from None
    if kind == "onnx":
        from analysis.onnx_model import OnnxError, load_onnx

        try:
            return load_onnx(path)
        except OnnxError as exc:
            raise SpecError(str(exc)) from None
    obj = None
    if kind != "safetensors":
        try:
            obj = load_plain(path)
        except Exception:  # noqa: BLE001 - not loadable as plain data: a pickled object
            pass
    if isinstance(obj, dict) or kind == "safetensors":
        raise SpecError(f"{path} is a state dict (weights without an architecture); give the architecture too: "
                        f"torchvision:ARCH={path} or model.py:factory={path}")
    if not trust_code:
        raise SpecError(f"{path} is a pickled Python object: loading it runs code from the file. Export the model "
                        f"to ONNX, or {TRUST_HINT}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise SpecError(f"{path} could not be unpickled: {_short(exc)}") from None
    if not isinstance(obj, nn.Module):
        raise SpecError(f"{path} holds {type(obj).__name__}, not a torch.nn.Module")
    return obj


def load_model(spec: str, trust_code: bool = False, trust_pickle: bool = False) -> nn.Module:
    """The model a spec names, in eval mode, on the CPU.

    Models that are programs (``file.py:factory``, TorchScript, ``.pt2``, a pickled module) run code from their
    file: they load only with ``trust_code`` (``trust_pickle`` is its older name)."""
    trust_code = trust_code or trust_pickle
    spec = spec.strip()
    if not spec:
        raise SpecError("empty model spec; try sample:digits-cnn")
    if "\x00" in spec:
        raise SpecError(f"the model spec {spec!r} contains a NUL character")
    if spec.startswith("sample:"):
        name = spec.removeprefix("sample:")
        if name not in samples.sample_names():
            raise SpecError(f"no bundled sample {name!r}; the samples are {', '.join(samples.sample_names())}")
        model = samples.load_sample(name)
    elif spec.endswith("=") and (spec.startswith("torchvision:") or ".py:" in spec):
        raise SpecError(f"the model spec {spec!r} ends in '=' with no weights file: give one "
                        f"({spec}weights.pth) or leave out '=' for randomly initialised weights")
    elif spec.startswith("torchvision:"):
        arch, _, weights = spec.removeprefix("torchvision:").partition("=")
        model = _torchvision(arch, weights or None)
    elif re.match(r"^.+\.py:[A-Za-z_]\w*(=.+)?$", spec):
        file_part, _, rest = spec.partition(".py:")
        factory, _, weights = rest.partition("=")
        model = _from_python_file(Path(file_part + ".py"), factory, weights or None, trust_code)
    else:
        model = _from_model_file(Path(spec), trust_code)
    return model.eval()


# ------------------------------------------------------------------------------------------------------- data


MAX_RANDOM_VALUES = 1 << 28  # 1 GiB of float32: a typo such as random:3x2240x2240 must not exhaust memory


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
    kind = _sniff(path)
    if kind == "unknown" and zipfile.is_zipfile(path):
        raise SpecError(f"data {path} is a zip archive that holds no images: expected {DATA_FORMATS} "
                        "(one sub-folder per class, e.g. cat/001.png)")
    if kind not in ("npz", "torch-save", "pickle"):
        raise SpecError(f"data {path} is not a torch.save or .npz file (its content is {kind_words(kind)}); "
                        f"expected {DATA_FORMATS}")
    _check_unpacked(path, kind, "data")
    try:
        if kind == "npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            obj = {k: torch.from_numpy(v) for k, v in arrays.items()}
        else:
            obj = load_plain(path)
    except Exception as exc:  # noqa: BLE001
        problem = _torch_load_problem(exc) if kind != "npz" else _short(exc)
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


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMALIZATIONS = ("imagenet", "none")


def _from_image_folder(path: Path, input_size: int, normalize: str, count: int | None,
                       shown: str | None = None, channels: int = 3) -> EvalData:
    """The images of an ``ImageFolder`` tree, in colour or (``channels=1``) grayscale; messages name it ``shown``
    (a zip archive it was extracted from)."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    def named(text: object) -> str:
        text = str(text).replace(str(path), shown) if shown else str(text)
        return _short(Exception(text))

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


def _is_zip_of_images(path: Path) -> bool:
    from analysis.uploads import UploadError, sniff

    if path.stat().st_size == 0:
        return False
    try:
        return sniff(path) == "images-zip"
    except UploadError as exc:
        raise SpecError(f"data {path}: {exc}") from None


def _from_image_zip(path: Path, input_size: int, normalize: str, count: int | None, channels: int = 3) -> EvalData:
    """Extract the archive safely into a temporary folder, read the images into memory, remove the folder."""
    import tempfile

    from analysis.uploads import UploadError, safe_extract

    with tempfile.TemporaryDirectory(prefix="prunescope-images-") as tmp:
        try:
            root = safe_extract(path, Path(tmp))
        except UploadError as exc:
            raise SpecError(f"data {path}: {exc}") from None
        data = _from_image_folder(root, input_size, normalize, count, shown=str(path), channels=channels)
    return EvalData(data.x, data.y, str(path), data.class_names)


def load_data(spec: str, count: int | None = None, input_size: int = 224, normalize: str = "imagenet",
              seed: int = 0, channels: int | None = None) -> EvalData:
    """The eval set a spec names; ``count`` keeps the first ``count`` samples (random data: how many)."""
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
        shape = parse_shape(spec.removeprefix("random:"), count or 256)
        gen = torch.Generator().manual_seed(seed)
        return EvalData(torch.randn((count or 256, *shape), generator=gen), None, f"{spec}@{count or 256}")
    elif spec.startswith("sample:"):
        raise SpecError(f"no bundled data {spec!r}; use sample:digits or sample:digits-train")
    else:
        path = Path(spec)
        if not path.exists():
            raise SpecError(f"data {spec} does not exist (a tensor file, an image folder, sample:digits or random:CxHxW)")
        if path.is_dir():
            return _from_image_folder(path, input_size, normalize, count, channels=channels or 3)
        if _is_zip_of_images(path):
            return _from_image_zip(path, input_size, normalize, count, channels=channels or 3)
        x, y = _from_tensor_file(path)
        data = EvalData(x, y, spec)
    if count is not None:
        data = EvalData(data.x[:count], None if data.y is None else data.y[:count], data.spec, data.class_names)
    return data


# --------------------------------------------------------------------------------------------------- workload


def check_fit(model: nn.Module, data: EvalData, model_spec: str = "the model") -> int:
    """Run one small batch through the model; return its class count or raise a ``SpecError`` naming both sides."""
    if len(data) == 0:
        raise SpecError(f"the data {data.spec} holds no samples")
    if not torch.isfinite(data.x).all():
        raise SpecError(f"the data {data.spec} contains NaN or infinite values")
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise SpecError(f"{model_spec} has NaN or infinite values in {name}")
    from analysis.metrics import _logits

    batch = data.x[:2]
    try:
        with torch.inference_mode():
            out = _logits(model(batch))
    except Exception as exc:  # noqa: BLE001 - any failure here is a mismatch between the two sides
        fixed = "Guard failed" in str(exc) and ".size()[0]" in str(exc)
        hint = ("; the program was exported for a fixed batch size: export it with a dynamic one, torch.export."
                "export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},))") if fixed else ""
        raise SpecError(f"{model_spec} cannot run on {data.spec}: inputs of shape {list(data.x.shape[1:])} "
                        f"({data.x.dtype}) failed with {type(exc).__name__}: {_short(exc)}{hint}") from None
    try:
        with torch.inference_mode():
            model(data.x[:1])
    except Exception as exc:  # noqa: BLE001
        raise SpecError(f"{model_spec} runs on a batch of {len(batch)} but not on a batch of 1 ({_short(exc, 120)}); "
                        "export it with a dynamic batch dimension (torch.export dynamic_shapes, Dim('batch'))") from None
    if out.dim() != 2 or out.shape[0] != batch.shape[0]:
        raise SpecError(f"{model_spec} returned outputs of shape {list(out.shape)} for {len(batch)} inputs; "
                        "expected (batch, classes) class scores")
    if not torch.isfinite(out).all():
        raise SpecError(f"{model_spec} returns NaN or infinite outputs on the first inputs of {data.spec}: the "
                        "metrics need finite class scores; check the model's forward (a division by zero, a log "
                        "of zero) or its input scaling")
    num_classes = int(out.shape[1])
    if data.y is not None and len(data.y):
        low, high = int(data.y.min()), int(data.y.max())
        if low < 0 or high >= num_classes:
            raise SpecError(f"the labels of {data.spec} run from {low} to {high}, but {model_spec} has "
                            f"{num_classes} classes (0 to {num_classes - 1})")
    return num_classes


def load_workload(model_spec: str, data_spec: str, count: int | None = None, input_size: int = 224,
                  normalize: str = "imagenet", trust_code: bool = False, trust_pickle: bool = False) -> Workload:
    """Load a model and its eval set and check that they fit before any work is done (``trust_code``: see
    ``load_model``)."""
    model = load_model(model_spec, trust_code=trust_code or trust_pickle)
    data = load_data(data_spec, count=count, input_size=input_size, normalize=normalize)
    try:
        num_classes = check_fit(model, data, model_spec)
    except SpecError:
        fitted = _grayscale_fit(model, model_spec, data, data_spec, count, input_size, normalize)
        if fitted is None:
            raise
        data, num_classes = fitted
    return Workload(model, data, model_spec, num_classes, tuple(data.x.shape[1:]), code_fp=code_fingerprint(model_spec))


def image_channels(input_shape: tuple[int, ...] | list[int]) -> int | None:
    """The channels images of this input shape were read with (1: grayscale), for reading more images the same
    way (calibration or training folders, a scan's eval set again); ``None`` when the inputs are not square
    images, as an image folder gives them."""
    shape = tuple(input_shape)
    return shape[0] if len(shape) == 3 and shape[0] in (1, 3) and shape[1] == shape[2] else None


def _grayscale_fit(model: nn.Module, model_spec: str, data: EvalData, data_spec: str, count: int | None,
                   input_size: int, normalize: str) -> tuple[EvalData, int] | None:
    """A one-channel model (MNIST-like) on a folder of colour images: the images read in grayscale and the
    class count, or ``None`` when the data are not such images or the model does not take them either."""
    path = Path(data_spec)
    if not (data.x.dim() == 4 and data.x.shape[1] == 3 and path.exists()
            and (path.is_dir() or _is_zip_of_images(path))):
        return None
    gray = load_data(data_spec, count=count, input_size=input_size, normalize=normalize, channels=1)
    try:
        return gray, check_fit(model, gray, model_spec)
    except SpecError:
        return None


def code_fingerprint(spec: str) -> str:
    """A hash of the code a model spec runs, beyond its weights: the ``.py`` file of ``file.py:factory``, the whole
    file of a TorchScript, ``.pt2``, ONNX or pickled model (their code is inside), the name of a sample or a
    torchvision architecture. A ``.py`` file's own imports are not followed."""
    spec = spec.strip()
    if spec.startswith(("sample:", "torchvision:")):
        return spec.partition("=")[0]
    match = re.match(r"^(.+\.py):([A-Za-z_]\w*)(=.+)?$", spec)
    path, label = (Path(match.group(1)), match.group(2)) if match else (Path(spec), "")
    h = hashlib.sha256(label.encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]
