"""Model specs -> a model in eval mode, on the CPU.

Model specs
    ``sample:NAME``                      a bundled sample (``sample_models/``)
    ``torchvision:ARCH[=weights]``       a torchvision architecture, random init or a state dict
    ``hf:FOLDER[@TASK]``                 a local Hugging Face model folder (``analysis.workload.hf``; data, not a
                                         program: no code from the folder runs)
    ``model.onnx``                       an ONNX graph, run in ONNX Runtime (``analysis.workload.onnx``)
    ``file.py:factory[=weights]``        your own code builds the model; weights are a state dict (a program)
    ``model.pt`` / ``model.ts``          TorchScript (a program)
    ``model.pt2``                        a ``torch.export`` program (a program; its archive is checked first)
    ``model.pt`` (pickled nn.Module)     a program: unpickling runs code

Programs run code from their file and load only with ``trust_code=True`` (the CLI's ``--trust-code``). State
dicts (``.pt``/``.pth``/``.bin``) are read with ``torch.load(weights_only=True)``; ``.safetensors`` too. Every way
a spec or a file can be wrong raises ``SpecError`` with a message that names the file and the fix.
"""

from __future__ import annotations

import importlib.util
import re
import types
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from analysis.workload import samples, usercode
from analysis.workload.errors import SpecError, short_error, torch_load_problem
from analysis.workload.files import check_unpacked_file, load_plain, sniff_kind
from analysis.workload.hf import load_hf
from analysis.workload.onnx import OnnxError, load_onnx
from analysis.workload.uploads import kind_words, zip_kind


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SpecError(f"weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise SpecError(f"weights file {path} is empty")
    kind = sniff_kind(path)
    if path.suffix == ".safetensors" or kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - any parse failure is the file's fault
            raise SpecError(f"{path} is not a readable safetensors file: {short_error(exc)}") from None
    if kind not in ("torch-save", "pickle"):
        raise SpecError(f"{path} is not a state-dict file (torch.save or .safetensors); its content is "
                        f"{kind_words(kind)}. Save the weights with torch.save(model.state_dict(), path)")
    check_unpacked_file(path, kind, "weights file")
    try:
        obj = load_plain(path)
    except Exception as exc:  # noqa: BLE001
        raise SpecError(f"{path} is not a state dict that loads without running code: {torch_load_problem(exc)}; "
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
        raise SpecError(f"the weights in {source} do not fit the architecture: {short_error(exc)}") from None
    return model


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
        raise SpecError(f"importing {path} failed: {type(exc).__name__}: {short_error(exc)}") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise SpecError(f"{path} has no callable {factory!r}")
    usercode.register(module)
    try:
        model = fn()
    except Exception as exc:  # noqa: BLE001 - the user's factory failed; nothing of ours runs inside it
        raise SpecError(f"{path}:{factory}() failed: {type(exc).__name__}: {short_error(exc)}") from None
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
    if sniff_kind(path) == "safetensors":
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
        raise SpecError(f"{path} is a damaged torch.export archive: {short_error(exc)}") from None


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
            raise SpecError(f"{path} is a damaged TorchScript file: {short_error(exc)}") from None
    if kind == "export":
        try:
            return _exported_module(path)
        except SpecError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise SpecError(f"{path} is a damaged torch.export program: {short_error(exc)}") from None
    if kind == "onnx":
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
        raise SpecError(f"{path} could not be unpickled: {short_error(exc)}") from None
    if not isinstance(obj, nn.Module):
        raise SpecError(f"{path} holds {type(obj).__name__}, not a torch.nn.Module")
    return obj


def load_model(spec: str, trust_code: bool = False, trust_pickle: bool = False) -> nn.Module:
    """The model a spec names, in eval mode, on the CPU.

    Models that are programs (``file.py:factory``, TorchScript, ``.pt2``, a pickled module) run code from their
    file: they load only with ``trust_code`` (``trust_pickle`` is its older name).

    Example::

        >>> from analysis import load_model
        >>> model = load_model("torchvision:resnet18")
        >>> sum(p.numel() for p in model.parameters())
        11689512
    """
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
    elif spec.startswith("hf:"):
        model = load_hf(spec)
    elif re.match(r"^.+\.py:[A-Za-z_]\w*(=.+)?$", spec):
        file_part, _, rest = spec.partition(".py:")
        factory, _, weights = rest.partition("=")
        model = _from_python_file(Path(file_part + ".py"), factory, weights or None, trust_code)
    else:
        model = _from_model_file(Path(spec), trust_code)
    return model.eval()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a weights file (``torch.save`` or ``.safetensors``, a training checkpoint's too), read
    without running code; a file that is not one is a ``SpecError`` naming it."""
    return _read_state_dict(Path(path))


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Fill ``model`` from ``state`` as a weights file fills an architecture (wrapper prefixes dropped); weights
    that do not fit are a ``SpecError`` naming ``source``."""
    return _load_state(model, state, source)
