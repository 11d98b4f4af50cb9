"""ONNX models analysed natively in ONNX Runtime, behind the ``nn.Module`` face the scan expects.

An ONNX file's prunable layers are the weight initializers that ``Conv``, ``Gemm`` and ``MatMul`` nodes read.
``OnnxModel`` holds each of them as an ``nn.Parameter`` in PyTorch's layout (output channels first, so masks
and criteria treat them exactly as the weights of the PyTorch model the file was exported from) and turns
them into *overridable* graph inputs: one ``InferenceSession`` then serves any weights, because ``forward``
feeds the current parameter values on every call. A scan prunes one weight at a time, so ``forward`` runs a
session in which only that weight is an input (kept until another weight is pruned): ONNX Runtime pre-packs
and fuses constant weights, which makes a scan 1.5-3.7x faster than with the all-inputs session.
``masks.applied`` prunes the parameters in place like any PyTorch weight, and ``save_pruned`` writes the same
graph with the pruned initializers.

ONNX Runtime gives no gradients and no view of intermediate activations, so the ``taylor`` and ``activation``
criteria are refused with a clear error. Exporters that fold BatchNorm into the convolutions (the default of
``torch.onnx.export``) change the weights themselves: such a file is analysed as the folded model it holds.
"""

from __future__ import annotations

import ast
import math
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from analysis.core.layers import Layer
from analysis.core.masks import applied

_WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1}


class OnnxError(ValueError):
    """An ONNX file that cannot be analysed; the message names the file and the reason."""


@dataclass(frozen=True)
class _Weight:
    """One prunable initializer: its graph name, where its parameter lives, and how the graph reads it."""

    init_name: str
    param_name: str
    op: str
    transposed: bool
    node_output: str
    groups: int
    module: str = ""


def short_error(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _attr(node, name: str, default: int) -> int:  # noqa: ANN001 - onnx.NodeProto
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _find_weights(graph, inits: dict[str, np.ndarray]) -> list[tuple[str, str, bool, str, int, str]]:  # noqa: ANN001
    """(initializer, op, stored transposed, output name, groups, module path of the node) for every prunable
    weight, in graph order.

    A 2-D initializer read through a ``Transpose`` node (what exporters write for ``x @ W.T`` without constant
    folding) counts as the weight itself, with its layout flipped.
    """
    flipped = {}
    for node in graph.node:
        perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
        if node.op_type == "Transpose" and node.input[0] in inits and inits[node.input[0]].ndim == 2 \
                and perm in ([], [[1, 0]]):
            flipped[node.output[0]] = node.input[0]
    found: dict[str, tuple[str, str, bool, str, int, str]] = {}
    for node in graph.node:
        if node.op_type not in _WEIGHT_INPUT or len(node.input) <= _WEIGHT_INPUT[node.op_type]:
            continue
        name = node.input[_WEIGHT_INPUT[node.op_type]]
        flip = name in flipped
        name = flipped.get(name, name)
        arr = inits.get(name)
        if arr is None or name in found or not np.issubdtype(arr.dtype, np.floating):
            continue
        if node.op_type == "Conv" and arr.ndim >= 3:
            found[name] = (name, "Conv", False, node.output[0], _attr(node, "group", 1), _module_path(node))
        elif node.op_type == "Gemm" and arr.ndim == 2 and not _attr(node, "transA", 0):
            found[name] = (name, "Gemm", flip == bool(_attr(node, "transB", 0)), node.output[0], 1, _module_path(node))
        elif node.op_type == "MatMul" and arr.ndim == 2:
            found[name] = (name, "MatMul", not flip, node.output[0], 1, _module_path(node))
    return list(found.values())


_OPAQUE = re.compile(r"::|^val_\d+$")  # onnx::Conv_62, val_14: names the exporter made up


def _module_path(node) -> str:  # noqa: ANN001 - onnx.NodeProto
    """The PyTorch module a node was exported from, when the exporter says: the node's name with the
    TorchScript-based exporter (``/layer2/downsample/downsample.0/Conv`` -> ``layer2.downsample.0``), its
    ``name_scopes`` metadata with the torch.export-based one (``['', 'fc', 'linear']`` -> ``fc``); else ``""``."""
    if node.name.startswith("/"):
        scopes = [p for p in node.name.split("/") if p][:-1]
        return ".".join(part[len(prev) + 1:] if prev and part.startswith(prev + ".") else part
                        for prev, part in zip(["", *scopes], scopes))
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = [str(x) for x in ast.literal_eval(prop.value)]
            except (ValueError, SyntaxError, TypeError):
                return ""
            modules = [x for x in scopes[:-1] if x]
            return modules[-1] if modules else ""
    return ""


def _register(root: nn.Module, path: str, tensor: torch.Tensor, parameter: bool, fallback: str) -> str:
    """Put ``tensor`` at the dotted ``path`` under ``root`` (so ``get_parameter(path)`` works), else at ``fallback``."""
    parts = path.split(".")
    try:
        if any(not p for p in parts):
            raise KeyError(path)
        module = root
        for part in parts[:-1]:
            child = module._modules.get(part)
            if child is None:
                child = nn.Module()
                module.add_module(part, child)
            module = child
        _put(module, parts[-1], tensor, parameter)
        return path
    except (KeyError, AttributeError, TypeError):
        _put(root, fallback, tensor, parameter)
        return fallback


def _put(module: nn.Module, name: str, tensor: torch.Tensor, parameter: bool) -> None:
    if hasattr(module, name) or name in module._modules:
        raise KeyError(name)
    if parameter:
        module.register_parameter(name, nn.Parameter(tensor, requires_grad=False))
    else:
        module.register_buffer(name, tensor)


def fixed_batch(session) -> int | None:  # noqa: ANN001 - onnxruntime.InferenceSession
    """The batch size an ONNX graph was exported for, when its input's first dimension is a number (``None``:
    a dynamic batch)."""
    dims = session.get_inputs()[0].shape
    return dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None


def run_batched(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, fixed: int | None,
                batch_size: int) -> np.ndarray:
    """``run`` over ``x`` in batches: of the graph's ``fixed`` batch size (the last one padded with copies of its
    last row, whose outputs are dropped), or, for a dynamic batch, of up to ``batch_size``."""
    step = fixed or max(1, batch_size)
    outs = []
    for start in range(0, len(x), step):
        xb = x[start:start + step]
        if fixed and len(xb) < fixed:
            xb = np.concatenate([xb, np.repeat(xb[-1:], fixed - len(xb), axis=0)])
        outs.append(np.asarray(run(np.ascontiguousarray(xb)))[:min(step, len(x) - start)])
    return np.concatenate(outs)


PYTORCH_FORMS = "TorchScript (.pt), a torch.export program (.pt2) or model.py:factory=weights"


def refuse(model: nn.Module, task: str, reason: str) -> None:
    """Raise ``OnnxError`` when ``model`` runs in ONNX Runtime: ``task`` (which ``reason``) cannot run on it."""
    if isinstance(model, OnnxModel):
        raise OnnxError(f"{task} is not available for ONNX models ({model.source}): {reason}, and ONNX Runtime "
                        f"gives none. Give the model in PyTorch form: {PYTORCH_FORMS}")


class OnnxModel(nn.Module):
    """An ONNX graph run by ONNX Runtime; its Conv/Gemm/MatMul weights are parameters fed on every call."""

    def __init__(self, proto, source: str = "the ONNX model") -> None:  # noqa: ANN001 - onnx.ModelProto
        super().__init__()
        import onnx
        from onnx import numpy_helper

        self.source = source
        self._proto = proto
        graph = proto.graph
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in inits]
        if len(inputs) != 1:
            raise OnnxError(f"{source} has {len(inputs)} graph inputs ({', '.join(i.name for i in inputs)}); "
                            "Prunescope feeds one input tensor")
        if not graph.output:
            raise OnnxError(f"{source} has no graph output")
        self.input_name = inputs[0].name
        self.output_name = graph.output[0].name
        self._input_dtype = onnx.helper.tensor_dtype_to_np_dtype(inputs[0].type.tensor_type.elem_type)
        dims = inputs[0].type.tensor_type.shape.dim
        self.fixed_batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value else None
        self._weights: list[_Weight] = []
        for i, (name, op, transposed, out, groups, module) in enumerate(_find_weights(graph, inits)):
            arr = inits.pop(name)
            tensor = torch.from_numpy(np.array(arr.T if transposed else arr, order="C", copy=True))
            param_name = _register(self, name, tensor, True, f"onnx_weight_{i}")
            self._weights.append(_Weight(name, param_name, op, transposed, out, groups, module))
        for i, (name, arr) in enumerate(inits.items()):
            if np.issubdtype(arr.dtype, np.floating) and arr.size:
                _register(self, name, torch.from_numpy(np.array(arr)), False, f"onnx_constant_{i}")
        self._session = self._make_session()
        self._baked = {w.param_name: self.get_parameter(w.param_name).detach().clone() for w in self._weights}
        self._single: tuple[_Weight, object] | None = None
        self._lock = threading.Lock()

    def _make_session(self, overridable: list[_Weight] | None = None):  # noqa: ANN202 - onnxruntime.InferenceSession
        """A session of the original graph in which ``overridable`` (default: every weight) are graph inputs."""
        import onnx
        import onnxruntime as ort

        served = onnx.ModelProto()
        served.CopyFrom(self._proto)
        by_name = {i.name: i for i in served.graph.initializer}
        listed = {i.name for i in served.graph.input}
        for w in self._weights if overridable is None else overridable:
            if w.init_name not in listed:
                init = by_name[w.init_name]
                served.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))
        if served.ir_version < 4:
            served.ir_version = 4
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.inter_op_num_threads = 1
        try:
            return ort.InferenceSession(served.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime rejects the graph
            raise OnnxError(f"ONNX Runtime cannot run {self.source}: {short_error(exc)}") from None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_session"] = state["_single"] = state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._session = self._make_session()

    def _feeds(self, x: torch.Tensor, weights: list[_Weight] | None = None) -> dict[str, np.ndarray]:
        feeds = {self.input_name: np.ascontiguousarray(x.detach().cpu().numpy().astype(self._input_dtype, copy=False))}
        for w in self._weights if weights is None else weights:
            value = self.get_parameter(w.param_name).detach().cpu()
            feeds[w.init_name] = np.ascontiguousarray((value.T if w.transposed else value).numpy())
        return feeds

    def _session_for_current_weights(self):  # noqa: ANN202 - (onnxruntime.InferenceSession, weights to feed)
        """The session to run with the current weights, and the weights it takes as inputs.

        A scan changes one weight at a time. A session where only that weight is a graph input (the others
        constant initializers, as loaded) runs the same graph 1.4-8x faster than one where every weight is an
        input, which ONNX Runtime cannot pre-pack or fuse (BENCHMARKS.md, "ONNX prefix reuse: measured"). The
        last such session is kept; when several weights differ from the loaded ones, the all-inputs session
        serves.
        """
        changed = [w for w in self._weights
                   if not torch.equal(self.get_parameter(w.param_name).detach().cpu(), self._baked[w.param_name])]
        with self._lock:
            single = self._single
            if len(changed) == 1 and (single is None or single[0] != changed[0]):
                single = self._single = (changed[0], self._make_session([changed[0]]))
        if len(changed) == 1 or (not changed and single is not None):
            return single[1], [single[0]]
        if not changed:
            return self._session, []
        return self._session, self._weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _get_current_dispatch_mode() is not None or (
                torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())):
            raise ValueError(f"{self.source} runs in ONNX Runtime, which gives no gradients or activations: the "
                             "taylor and activation criteria need them; use magnitude, l1, l2 or random")
        session, weights = self._session_for_current_weights()
        feeds = self._feeds(x, weights)

        def run(xb: np.ndarray) -> np.ndarray:
            return session.run([self.output_name], {**feeds, self.input_name: xb})[0]

        out = run_batched(run, feeds[self.input_name], self.fixed_batch, len(x))
        return torch.from_numpy(out).to(x.device)

    # ----------------------------------------------------------------------------------------------- layers

    def prunable_layers(self, example: torch.Tensor) -> list[Layer]:
        """The Conv/Gemm/MatMul weights as ``Layer``s, FLOPs per sample from ONNX shape inference."""
        shapes = self._output_shapes(tuple(example.shape[1:]))
        names = [w.module if _OPAQUE.search(w.init_name) and w.module else w.init_name.removesuffix(".weight")
                 for w in self._weights]
        names = [n if names.count(n) == 1 else w.init_name for n, w in zip(names, self._weights)]
        layers = []
        for order, w in enumerate(self._weights):
            p = self.get_parameter(w.param_name)
            shape = tuple(p.shape)
            out = shapes.get(w.node_output)
            if w.op == "Conv":
                kind, per = f"Conv{len(shape) - 2}d", math.prod(out[2:]) if out else 1
            else:
                kind, per = "Linear", math.prod(out[1:-1]) if out else 1
            layers.append(Layer(name=names[order], param_name=w.param_name, kind=kind, shape=shape, params=p.numel(),
                                flops=2 * p.numel() * int(per), groups=w.groups, order=order))
        return layers

    def _output_shapes(self, sample_shape: tuple[int, ...]) -> dict[str, list[int] | None]:
        import onnx

        proto = onnx.ModelProto()
        proto.CopyFrom(self._proto)
        dims = proto.graph.input[[i.name for i in proto.graph.input].index(self.input_name)].type.tensor_type.shape.dim
        for d, size in zip(dims, (self.fixed_batch or 1, *sample_shape)):
            d.ClearField("dim_param")
            d.dim_value = size
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        except Exception:  # noqa: BLE001 - FLOPs are then estimated from the parameters alone
            return {}
        out = {}
        for vi in (*inferred.graph.value_info, *inferred.graph.output):
            d = [x.dim_value if x.HasField("dim_value") else None for x in vi.type.tensor_type.shape.dim]
            out[vi.name] = d if d and all(v is not None for v in d) else None
        return out

    # ----------------------------------------------------------------------------------------------- export

    def to_onnx(self):  # noqa: ANN201 - onnx.ModelProto
        """The original graph with the current weight values written into its initializers."""
        import onnx
        from onnx import numpy_helper

        proto = onnx.ModelProto()
        proto.CopyFrom(self._proto)
        values = {w.init_name: (w, self.get_parameter(w.param_name).detach().cpu()) for w in self._weights}
        for init in proto.graph.initializer:
            if init.name in values:
                w, value = values[init.name]
                arr = np.ascontiguousarray((value.T if w.transposed else value).numpy())
                init.CopyFrom(numpy_helper.from_array(arr, init.name))
        return proto


def load_onnx(path: str | Path) -> OnnxModel:
    """An ONNX file as an ``OnnxModel``; a damaged file or a graph ONNX Runtime refuses is an ``OnnxError``."""
    import onnx

    path = Path(path)
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise OnnxError(f"{path} is not a readable ONNX model (damaged or truncated?): {short_error(exc)}") from None
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001
        raise OnnxError(f"{path} is not a valid ONNX graph: {short_error(exc)}") from None
    return OnnxModel(proto, str(path))


def save_pruned(model: OnnxModel, path: str | Path, masks: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model``'s graph with its weights pruned by ``masks`` (parameter name -> keep-mask) to ``path``."""
    import onnx


    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with applied(model, masks or {}):
        onnx.save(model.to_onnx(), str(path))
    return path
