"""The ATen operators Prunescope reads, in one table: which carry a prunable weight, where their operands sit, and
how each of the others moves channels.

Every pass that watches a forward pass at the ATen level reads this table: layer discovery
(``core.layers``), the activation-aware criterion's input norms (``core.criteria``), the channel graph
(``schedule.channels``), dead units and activation observation (``diagnose``). A weight found through one
operator is then read the same way by all of them.
"""

from __future__ import annotations

import torch

CONV_OPS = frozenset({"aten.convolution", "aten._convolution", "aten.conv1d", "aten.conv2d", "aten.conv3d"})
MATMUL_OPS = frozenset({"aten.addmm", "aten.mm", "aten.bmm", "aten.baddbmm", "aten.linear", "aten.matmul"})
WEIGHT_OPS = CONV_OPS | MATMUL_OPS
EMBEDDING_OPS = frozenset({"aten.embedding", "aten.embedding_bag", "aten._embedding_bag"})  # a table read by index
_FULL_CONV = frozenset({"aten.convolution", "aten._convolution"})  # (input, weight, bias, ..., transposed, ..., groups)

# Output channel c depends only on input channel c, and the shape is kept: activations, BatchNorm, copies.
CHANNELWISE = frozenset({
    "aten.batch_norm", "aten.native_batch_norm", "aten._native_batch_norm_legit",
    "aten._native_batch_norm_legit_no_training", "aten.cudnn_batch_norm", "aten.miopen_batch_norm",
    "aten.relu", "aten.relu_", "aten.relu6", "aten.gelu", "aten.gelu_", "aten.silu", "aten.silu_", "aten.sigmoid",
    "aten.sigmoid_", "aten.tanh", "aten.tanh_", "aten.hardtanh", "aten.hardtanh_", "aten.hardswish",
    "aten.hardswish_", "aten.hardsigmoid", "aten.hardsigmoid_", "aten.leaky_relu", "aten.leaky_relu_", "aten.elu",
    "aten.elu_", "aten.mish", "aten.mish_", "aten.clamp", "aten.clamp_", "aten.clamp_min", "aten.clamp_min_",
    "aten.dropout", "aten.native_dropout", "aten.feature_dropout", "aten.alpha_dropout", "aten.clone",
    "aten.detach", "aten.alias", "aten.contiguous", "aten._to_copy", "aten.to",
})
# Per channel too, but the spatial size changes (pooling, resizing, reductions over positions).
POOLING = frozenset({
    "aten.max_pool1d", "aten.max_pool2d", "aten.max_pool3d", "aten.max_pool2d_with_indices",
    "aten.max_pool3d_with_indices", "aten.avg_pool1d", "aten.avg_pool2d", "aten.avg_pool3d",
    "aten.adaptive_avg_pool1d", "aten.adaptive_avg_pool2d", "aten.adaptive_avg_pool3d", "aten._adaptive_avg_pool2d",
    "aten._adaptive_avg_pool3d", "aten.adaptive_max_pool1d", "aten.adaptive_max_pool2d", "aten.adaptive_max_pool3d",
    "aten.mean", "aten.amax", "aten.sum", "aten.upsample_nearest2d", "aten.upsample_bilinear2d",
})
# Element-wise arithmetic of several tensors: residual sums, gates, scales.
ARITHMETIC = frozenset({"aten.add", "aten.add_", "aten.sub", "aten.sub_", "aten.mul", "aten.mul_", "aten.div",
                        "aten.div_"})
RESHAPES = frozenset({"aten.view", "aten._unsafe_view", "aten.reshape", "aten.flatten", "aten._reshape_alias",
                      "aten.squeeze", "aten.unsqueeze"})
CAT = "aten.cat"


def op_name(func: object) -> str:
    """``aten.addmm`` for ``torch.ops.aten.addmm.default``: the name this table uses."""
    return str(func._overloadpacket)  # type: ignore[attr-defined]


def first_tensor(out: object) -> object:
    """The main output of an operator (the first of a tuple)."""
    return out[0] if isinstance(out, (tuple, list)) and out else out


def weight_operand(op: str, args: tuple) -> torch.Tensor | None:
    """The operand of a conv or matmul that holds the weight, in PyTorch's usual call (``None`` for other ops)."""
    if op in CONV_OPS or op in ("aten.linear", "aten.mm", "aten.bmm", "aten.matmul"):
        return args[1] if len(args) > 1 else None
    if op in ("aten.addmm", "aten.baddbmm"):
        return args[2] if len(args) > 2 else None
    return None


def input_operand(op: str, args: tuple) -> torch.Tensor | None:
    """The operand of a conv or matmul that holds the data the weight reads (``None`` for other ops)."""
    if op in CONV_OPS or op in ("aten.linear", "aten.mm", "aten.bmm", "aten.matmul"):
        return args[0] if args else None
    if op in ("aten.addmm", "aten.baddbmm"):
        return args[1] if len(args) > 1 else None
    return None


def stored_in_out(op: str, operand: torch.Tensor, param: torch.Tensor) -> bool:
    """Whether a matmul reads ``param`` as it is stored, as ``x @ W`` with W of shape (in, out) (transformers'
    ``Conv1D``, GPT-2's projections), rather than through a transpose as ``nn.Linear``'s (out, in) weight is read.
    Its output features are then the stored weight's columns."""
    if op not in ("aten.addmm", "aten.mm", "aten.matmul") or operand.dim() != 2:
        return False
    return tuple(operand.shape) == tuple(param.shape) and tuple(operand.stride()) == tuple(param.stride())


def is_transposed_conv(op: str, args: tuple) -> bool:
    return op in _FULL_CONV and len(args) > 6 and bool(args[6])


def conv_groups(op: str, args: tuple) -> int:
    """The ``groups`` of a convolution (1 for the other operators)."""
    if op in _FULL_CONV and len(args) > 8:
        return int(args[8])
    if op in CONV_OPS and len(args) > 6:
        return int(args[6])
    return 1


def channel_dim(op: str) -> int:
    """The dimension of a conv's or matmul's output that holds its output channels (features)."""
    return 1 if op in CONV_OPS else -1
