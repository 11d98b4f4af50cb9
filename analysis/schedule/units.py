"""Remove a heads or neurons schedule's pruned units for real: the shrunk twin of its masked model.

A ``heads`` or ``neurons`` schedule prunes coupled layers (``core.granularity.CoupledLayer``): each unit owns rows or
columns of several weights (``CoupledLayer.parts``, the one place that says which). The masked model zeroes them;
``shrink_units`` cuts them out instead:

- each part's weight keeps the rows (axis 0, with the bias entries) or columns (axis 1) of the units that stay, in
  their order, for ``nn.Linear`` and transformers' ``Conv1D`` (weight stored (in, out)) alike, so GPT-2's fused
  ``c_attn`` loses the head's query, key and value outputs and grouped-query attention loses a key/value group with
  its query heads;
- the attention module that splits the projections into heads is told its new width (``HEAD_COUNTS``: the head
  counts and widths Hugging Face attention modules read in their forward), so its reshapes still work.

A pruned unit contributes nothing in the masked model (its output-side rows or columns are zero, whatever its bias
feeds through), so the two compute the same function. ``shrink_units`` runs both once on an example and refuses
(``ShrinkError``, one line) where they differ or the shrunk one fails: attention code that does not take fewer heads
than its configuration says, a block that would lose every unit, a weight that is not a linear layer's.
"""

from __future__ import annotations

import torch
from torch import nn

from analysis.core.granularity import CoupledLayer
from analysis.core.layers import Layer
from analysis.core.modules import copy_model
from analysis.schedule.coupling import ShrinkError

# Attributes of an attention module that its forward reads: the query heads, key/value heads, or their width
# (query heads x head size). GPT-2: num_heads, split_size; BERT: num_attention_heads, all_head_size.
HEAD_COUNTS = ("num_heads", "num_attention_heads", "num_key_value_heads", "split_size", "all_head_size")
TOLERANCE = 1e-4  # the shrunk and the masked model agree to float summation order


def kept_units(layer: CoupledLayer, keep: dict[str, torch.Tensor]) -> torch.Tensor:
    """(units,) booleans: the units of ``layer`` that its keep-masks (by parameter name, as ``Schedule.masks`` gives
    them) keep; all of them where the masks do not name the layer."""
    part = layer.parts[0]
    mask = keep.get(part.layer.param_name)
    if mask is None:
        return torch.ones(layer.shape[0], dtype=torch.bool)
    rows = part.layer.stored(mask.cpu())  # back in the (out, in) order the part's index counts in
    along = rows[:, 0] if part.axis == 0 else rows[0]
    return along.reshape(-1)[part.index[:, 0]]


def shrink_units(model: nn.Module, layers: list[Layer], keep: dict[str, torch.Tensor],
                 example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` (the masked model of a heads or neurons schedule) without the units ``keep`` removes from
    its coupled ``layers``; checked on ``example`` against ``model``. ``ShrinkError`` says why it cannot be made."""
    plan = {l.name: (l, kept_units(l, keep)) for l in layers if isinstance(l, CoupledLayer)}
    empty = [name for name, (_, units) in plan.items() if not units.any()]
    if empty:
        raise ShrinkError(f"the schedule removes every unit of {empty[0]}; a block without heads or neurons cannot "
                          "be cut out")
    small = copy_model(model)
    for layer, units in plan.values():
        if not units.all():
            _cut_units(small, layer, units)
    _check(small, model, example)
    return small.eval()


def _cut_units(model: nn.Module, layer: CoupledLayer, units: torch.Tensor) -> None:
    """Cut the rows or columns of the units not in ``units`` out of every part, then tell the attention module."""
    for part in layer.parts:
        index = part.index[units].flatten().sort().values
        _cut(model, part.layer, part.axis, index)
    if layer.kind.startswith("attention"):
        _set_heads(model, layer, units)


def _cut(model: nn.Module, layer: Layer, axis: int, index: torch.Tensor) -> None:
    """Keep the rows (``axis`` 0, and the bias entries) or columns (1) ``index`` of the layer's weight, in the
    (out, in) order; the module's sizes follow."""
    owner, _, name = layer.param_name.rpartition(".")
    module = model.get_submodule(owner)
    transposed = type(module).__name__ == "Conv1D" and hasattr(module, "nf")
    if name != "weight" or not (isinstance(module, nn.Linear) or transposed):
        raise ShrinkError(f"{layer.param_name} is not the weight of a linear layer (nn.Linear or transformers' "
                          f"Conv1D) but of a {type(module).__name__}, which Prunescope cannot cut")
    dim = 1 - axis if transposed else axis
    with torch.no_grad():
        module.weight = nn.Parameter(module.weight.index_select(dim, index.to(module.weight.device)).clone())
        if axis == 0 and module.bias is not None:
            module.bias = nn.Parameter(module.bias.index_select(0, index.to(module.bias.device)).clone())
    size = len(index)
    if transposed:
        setattr(module, "nf" if axis == 0 else "nx", size)
    else:
        setattr(module, "out_features" if axis == 0 else "in_features", size)


def _set_heads(model: nn.Module, layer: CoupledLayer, units: torch.Tensor) -> None:
    """Tell the module that splits the query projection into heads (the owner of its first part) what it keeps:
    each count or width in ``HEAD_COUNTS`` it has shrinks with the units (a unit is a key/value head and its query
    heads). Modules that read the head size only (Llama's ``view(..., -1, head_dim)``) need nothing."""
    owner = model.get_submodule(layer.parts[0].layer.param_name.rpartition(".")[0].rpartition(".")[0])
    kept, total = int(units.sum()), len(units)
    for attr in HEAD_COUNTS:
        value = getattr(owner, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            if value % total:
                raise ShrinkError(f"{type(owner).__name__} of {layer.name} has {attr} = {value}, which its "
                                  f"{total} heads do not divide")
            setattr(owner, attr, value // total * kept)


def _check(small: nn.Module, model: nn.Module, example: torch.Tensor) -> None:
    """``small`` computes what ``model`` computes on ``example``; else a ``ShrinkError`` saying how it does not."""
    try:
        with torch.inference_mode():
            got, want = small(example), model(example)
    except Exception as exc:  # noqa: BLE001 - attention code that cannot take fewer heads fails in many ways
        raise ShrinkError(f"the model's attention code does not run with fewer heads or neurons than its "
                          f"configuration says ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    got, want = (t if isinstance(t, torch.Tensor) else t[0] for t in (got, want))
    scale = float(want.abs().max()) or 1.0
    diff = float((got.float() - want.float()).abs().max()) / scale if got.shape == want.shape else float("inf")
    if not diff <= TOLERANCE:
        raise ShrinkError(f"the model with its heads or neurons cut out does not compute what the masked model "
                          f"computes (relative difference {diff:.3g}): its attention code reads a head count "
                          "Prunescope does not update")
