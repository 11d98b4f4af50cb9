"""Find the prunable layers of a model, with their shapes, parameter counts and FLOPs.

A prunable layer is a weight that a convolution or a matrix multiplication reads: ``Conv1d/2d/3d``,
``Linear``, the projections inside ``nn.MultiheadAttention`` (``in_proj_weight``, ``out_proj``) and in
Hugging Face transformers (``nn.Linear``, and ``Conv1D``, whose weight is stored (in, out) and read as
``x @ W``). Layers are found by watching one forward pass at the ATen level rather than by module type, so the
same code finds them in a plain ``nn.Module``, a TorchScript module and an unlifted ``torch.export`` program.
FLOPs come from ``torch.utils.flop_counter``'s formulas, attributed to the weight each operation reads.

Embedding tables (read by ``aten.embedding``) and the output projection onto the vocabulary (a language
model's head, tied to the embeddings or of their shape) are found too but left out unless asked for
(``include_embeddings``): pruning them changes every token's representation at once, and they are listed
with that reason beside the layers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import flop_registry

from analysis.core.dispatch import EagerDispatchMode, storage_key
from analysis.core.modules import parameter
from analysis.core.ops import (
    CONV_OPS,
    EMBEDDING_OPS,
    WEIGHT_OPS,
    conv_groups,
    is_transposed_conv,
    stored_in_out,
    weight_operand,
)


@dataclass
class Layer:
    """One prunable weight: where it lives, what it is, and what it costs on the workload's input.

    ``shape`` is the weight as the layer computes with it, output features first: (out, in, ...). A weight
    stored the other way round, (in, out) (``transposed``: transformers' ``Conv1D``), has ``shape`` (out, in) all
    the same; masks are made in that order and stored in the weight's own (``stored``)."""

    name: str
    param_name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    flops: int
    groups: int = 1
    order: int = 0
    extra: dict = field(default_factory=dict)
    transposed: bool = False

    @property
    def out_channels(self) -> int:
        return self.shape[0]

    @classmethod
    def from_meta(cls, d: dict) -> "Layer":
        """A layer as a scan records it (``scan.json``'s ``layers``, ``describe``)."""
        return cls(d["name"], d.get("param_name", d["name"] + ".weight"), d.get("type", ""), tuple(d["shape"]),
                   int(d["params"]), int(d["flops"]), int(d.get("groups", 1)), transposed=bool(d.get("transposed")))

    def to_meta(self) -> dict:
        meta = {"name": self.name, "param_name": self.param_name, "type": self.kind, "shape": list(self.shape),
                "params": self.params, "flops": self.flops, "groups": self.groups}
        return {**meta, "transposed": True} if self.transposed else meta

    def weight(self, model: nn.Module) -> torch.Tensor:
        """The live weight tensor of this layer inside ``model`` (as stored)."""
        return parameter(model, self.param_name)

    def stored(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor in the layer's (out, in) order as the weight is stored (and back: the swap is its own inverse)."""
        return t.t().contiguous() if self.transposed else t

    def masks(self, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The keep-masks by parameter name that prune this layer with ``mask`` (given in the layer's (out, in)
        order, returned in the weight's stored one)."""
        return {self.param_name: self.stored(mask)}

    @property
    def param_names(self) -> tuple[str, ...]:
        """The parameters pruning this layer changes (several for a coupled layer: heads, neurons)."""
        return (self.param_name,)


def _layer_name(param_name: str) -> str:
    """``block.conv.weight`` -> ``block.conv``; ``attn.in_proj_weight`` -> ``attn.in_proj``."""
    if param_name.endswith(".weight"):
        return param_name[: -len(".weight")]
    if param_name.endswith("_weight"):
        return param_name[: -len("_weight")]
    return param_name


class _WeightUseRecorder(EagerDispatchMode):
    """Records, for every conv/matmul operation, which watched weights it reads and how many FLOPs it does."""

    def __init__(self, watched: dict[int, str], params: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.watched = watched
        self.params = params
        self.uses: dict[str, dict] = {}
        self.total_flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        flops = 0
        if packet in flop_registry:
            try:
                flops = int(flop_registry[packet](*args, **kwargs, out_val=out))
            except TypeError:
                flops = 0
        self.total_flops += flops
        op = str(packet)
        if op not in WEIGHT_OPS and op not in EMBEDDING_OPS:
            return out
        for arg in args:
            if isinstance(arg, torch.Tensor) and arg.dim() >= 2:
                name = self.watched.get(storage_key(arg))
                if name is None:
                    continue
                use = self.uses.setdefault(name, {"op": op, "flops": 0, "groups": 1, "transposed": False,
                                                  "in_out": arg is weight_operand(op, args)
                                                  and stored_in_out(op, arg, self.params[name]), "ops": set()})
                use["flops"] += flops
                use["ops"].add(op)
                if op in CONV_OPS:
                    use["transposed"] = is_transposed_conv(op, args)
                    use["groups"] = conv_groups(op, args)
        return out


def _kind(use: dict, shape: tuple[int, ...], param_name: str) -> str:
    op = use["op"]
    if op in EMBEDDING_OPS:
        return "Embedding" + (" (tied to the output head)" if use["ops"] & WEIGHT_OPS else "")
    if op in CONV_OPS:
        return f"Conv{len(shape) - 2}d"
    if param_name.endswith("in_proj_weight"):
        return "MultiheadAttention.in_proj"
    return "Conv1D" if use["in_out"] else "Linear"


@contextmanager
def gradients_on(model: nn.Module) -> Iterator[None]:
    """Every parameter requires grad and autograd is on for the block; each flag comes back as it was.

    Tracing passes use it: fused inference fast paths (e.g. in ``nn.TransformerEncoderLayer``) would otherwise
    hide the weights, and tracers that need autograd (Torch-Pruning's) see every parameter.
    """
    params = list(model.named_parameters())
    restore = {n: p.requires_grad for n, p in params}
    try:
        for _, p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for n, p in params:
            p.requires_grad_(restore[n])


TRANSPOSED_REASON = "a transposed convolution (ConvTranspose): not pruned by Prunescope yet"


@contextmanager
def decomposed_attention() -> Iterator[None]:
    """``nn.MultiheadAttention`` (and the Transformer layers) without their fused inference kernel, which reads
    the projection weights inside one operator: passes that watch each projection's output need the
    decomposed path. The flag is process-wide and comes back as it was."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


EMBEDDING_REASON = ("an embedding table: left out by default, as pruning it changes every token's "
                    "representation (include_embeddings, --include-embeddings, scans it)")
HEAD_REASON = ("the output head onto the vocabulary: left out by default with the embeddings "
               "(include_embeddings, --include-embeddings, scans it)")


def find_layers(model: nn.Module, example: torch.Tensor, unsupported: dict[str, str] | None = None,
                include_embeddings: bool = False) -> list[Layer]:
    """Prunable layers of ``model`` in execution order, measured on one forward pass of ``example``.

    ``example`` should be a small batch (one sample is enough); FLOPs are reported per sample. A model that
    does not run through PyTorch's operators (``analysis.onnx_model.OnnxModel``) lists its own layers. Weights
    found but not prunable (transposed convolutions), and embeddings and the vocabulary head unless
    ``include_embeddings``, go to ``unsupported``, by layer name, with the reason.
    """
    if callable(getattr(model, "prunable_layers", None)):
        return model.prunable_layers(example)
    params = dict(model.named_parameters())
    watched = {storage_key(p): n for n, p in params.items() if p.dim() >= 2}
    recorder = _WeightUseRecorder(watched, params)
    with gradients_on(model), recorder:
        model(example)
    batch = max(1, example.shape[0])
    layers, skipped = [], {}
    for order, (param_name, use) in enumerate(recorder.uses.items()):
        if use["transposed"]:
            skipped[_layer_name(param_name)] = TRANSPOSED_REASON
            continue
        p = params[param_name]
        shape = tuple(p.shape)[::-1] if use["in_out"] else tuple(p.shape)
        layers.append(Layer(name=_layer_name(param_name), param_name=param_name, kind=_kind(use, shape, param_name),
                            shape=shape, params=p.numel(), flops=use["flops"] // batch, groups=use["groups"],
                            order=order, transposed=use["in_out"]))
    if not include_embeddings:
        left_out = embedding_layers(layers)
        skipped.update(left_out)
        layers = [l for l in layers if l.name not in left_out]
    if unsupported is not None:
        unsupported.update(skipped)
    return layers


def embedding_layers(layers: list[Layer]) -> dict[str, str]:
    """The embedding tables among ``layers`` and the output head onto the vocabulary (a matmul weight of an
    embedding's shape: a language model's untied head), by name with the reason they are left out by default."""
    tables = {l.shape for l in layers if l.kind.startswith("Embedding")}
    return {l.name: EMBEDDING_REASON if l.kind.startswith("Embedding") else HEAD_REASON
            for l in layers if l.kind.startswith("Embedding") or (l.kind in ("Linear", "Conv1D") and l.shape in tables)}


def layers_for(model: nn.Module, example: torch.Tensor, names: "list[str] | set[str] | dict") -> list[Layer]:
    """The layers a schedule over ``names`` counts: those found by default, plus the embeddings or vocabulary
    head it names (a schedule made from a scan that included them)."""
    left_out: dict[str, str] = {}
    layers = find_layers(model, example, left_out)
    if any(left_out.get(n) in (EMBEDDING_REASON, HEAD_REASON) for n in names):
        named = set(names)
        layers = [l for l in find_layers(model, example, include_embeddings=True)
                  if l.name in named or left_out.get(l.name) not in (EMBEDDING_REASON, HEAD_REASON)]
    return layers


def layer_table(layers: list[Layer]) -> pd.DataFrame:
    """A summary table: one row per layer with type, shape, parameters, FLOPs and their shares of the total."""
    df = pd.DataFrame(
        {
            "layer": [l.name for l in layers],
            "type": [l.kind for l in layers],
            "shape": ["x".join(map(str, l.shape)) for l in layers],  # (out, in, ...), whatever the storage
            "params": [l.params for l in layers],
            "flops": [l.flops for l in layers],
        }
    )
    total_p, total_f = max(1, df["params"].sum()), max(1, df["flops"].sum())
    df["params_share"] = df["params"] / total_p
    df["flops_share"] = df["flops"] / total_f
    return df


def select_layers(layers: list[Layer], names: list[str] | None,
                  unsupported: dict[str, str] | None = None) -> list[Layer]:
    """The layers named in ``names`` (all when ``None``), in model order; an unknown name is a ``ValueError``
    (which says why for a layer in ``unsupported``)."""
    if not names:
        return list(layers)
    by_name = {l.name: l for l in layers}
    unknown = [n for n in names if n not in by_name]
    if unknown and unknown[0] in (unsupported or {}):
        raise ValueError(f"layer {unknown[0]!r} is {unsupported[unknown[0]]}")
    if unknown:
        sample = ", ".join(list(by_name)[:8]) + (", ..." if len(by_name) > 8 else "")
        raise ValueError(f"unknown layer {unknown[0]!r}; the model's prunable layers are: {sample}")
    wanted = set(names)
    return [l for l in layers if l.name in wanted]
