"""Graph analysis for the fast engine: trace a model with ``torch.fx`` (or, where that fails, ``torch.export``)
and cut it around one layer.

Pruning one layer changes only what is downstream of it. ``split`` finds, for a weight, the nodes that read it
(the roots), every node that depends on them (the downstream part) and the dense values the downstream part
reads from outside (the frontier: the layer's input, a residual branch, a class token). ``evaluate`` computes
dense values node by node from whatever is already known, so a scan can walk the model layer by layer and
never recompute a prefix.
"""

from __future__ import annotations

import copy
import operator
import warnings
from dataclasses import dataclass

import torch
from torch import fx, nn

_INPLACE_FUNCTIONS = {
    operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
    operator.itruediv: operator.truediv, operator.iand: operator.and_, operator.ior: operator.or_,
    torch.relu_: torch.relu, torch.sigmoid_: torch.sigmoid, torch.tanh_: torch.tanh,
}


class Untraceable(Exception):
    """The model cannot be traced into a graph; the message says why."""


def trace(model: nn.Module, example: torch.Tensor | None = None) -> fx.GraphModule:
    """``model`` as an fx graph whose operations never write into their inputs.

    ``torch.fx`` traces it symbolically; a model it cannot trace (Hugging Face transformers, whose forward
    branches on its arguments) is exported with ``torch.export`` on ``example`` inputs instead, with a dynamic
    batch dimension, when ``example`` is given. ``traced_by`` (an attribute of the graph) says which did.
    Cached dense values are read by many pruned variants, so an in-place ``ReLU`` or ``+=`` would corrupt
    them: in-place modules, functions and methods are replaced by their out-of-place forms. The graph shares
    the model's parameters (masking a weight in place is seen by both).
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise Untraceable("TorchScript modules cannot be traced by torch.fx")
    try:
        gm = fx.symbolic_trace(model)
        gm.traced_by = "torch.fx"
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: try export, else the naive engine
        reason = f"torch.fx cannot trace it ({_one_line(exc)})"
        if example is None:
            raise Untraceable(reason) from None
        gm = exported(model, example, reason)
    _make_out_of_place(gm)
    return gm


def exported(model: nn.Module, example: torch.Tensor, reason: str) -> fx.GraphModule:
    """The unlifted graph of ``torch.export`` on ``example`` (two samples, so that the batch stays dynamic),
    sharing the model's parameters; ``Untraceable`` with both reasons when export fails too."""
    pair = example[:2] if len(example) >= 2 else example.expand(2, *example.shape[1:])
    batch = torch.export.Dim("batch", min=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = torch.export.export(model, (pair,), dynamic_shapes=({0: batch},)).module()
    except Exception as exc:  # noqa: BLE001 - export failed as well: the naive engine runs
        raise Untraceable(f"{reason}, nor can torch.export ({_one_line(exc)})") from None
    gm.traced_by = "torch.export"
    gm.aliases = _aliases(model, gm)
    return gm


def _aliases(model: nn.Module, gm: fx.GraphModule) -> dict[str, str]:
    """The model's parameter names that the exported graph reads under another name (a weight tied to another,
    such as GPT-2's embeddings and output head, keeps only one of its names), matched by storage."""
    graph = {p.untyped_storage().data_ptr(): n for n, p in gm.named_parameters(remove_duplicate=False)}
    found = {n: graph.get(p.untyped_storage().data_ptr()) for n, p in model.named_parameters()}
    return {n: g for n, g in found.items() if g is not None and g != n}


def graph_name(gm: fx.GraphModule, param_name: str) -> str:
    """The name under which the traced graph reads the model's parameter ``param_name``."""
    return getattr(gm, "aliases", {}).get(param_name, param_name)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


def _make_out_of_place(gm: fx.GraphModule) -> None:
    for i, node in enumerate(list(gm.graph.nodes)):
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if getattr(module, "inplace", False) is True:
                safe = copy.copy(module)
                safe.inplace = False
                name = f"_out_of_place_{i}"
                gm.add_submodule(name, safe)
                node.target = name
        elif node.op == "call_function":
            if node.target in _INPLACE_FUNCTIONS:
                node.target = _INPLACE_FUNCTIONS[node.target]
            elif node.kwargs.get("inplace") is True:
                node.kwargs = {**node.kwargs, "inplace": False}
        elif node.op == "call_method" and node.target.endswith("_") and not node.target.endswith("__"):
            node.target = node.target[:-1]
    gm.recompile()


@dataclass
class Split:
    """One layer's cut through the graph (nodes in graph order)."""

    roots: list[fx.Node]
    downstream: list[fx.Node]
    frontier: list[fx.Node]
    reaches_output: bool

    @property
    def roots_read_dense(self) -> bool:
        """True when every root reads only dense values (or other roots): the usual case. A weight shared by
        a root and a later node reached through other nodes is not."""
        allowed = set(self.frontier) | set(self.roots)
        return all(a in allowed for r in self.roots for a in r.all_input_nodes)


def roots_of(gm: fx.GraphModule, param_name: str | tuple[str, ...]) -> list[fx.Node]:
    """The nodes whose result changes when the parameter ``param_name`` (or any of several) changes.

    A leaf module that owns the parameter (``conv``, ``attn`` for ``attn.in_proj_weight``), or the users of a
    ``get_attr`` that fetches it (functional code such as torchvision's Swin attention).
    """
    names = {graph_name(gm, n) for n in ((param_name,) if isinstance(param_name, str) else param_name)}
    found = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and any(n.startswith(node.target + ".") for n in names):
            found.append(node)
        elif node.op == "get_attr" and node.target in names:
            found.extend(node.users)
    return list(dict.fromkeys(found))


def with_params(gm: fx.GraphModule, front: dict, weights: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """``front`` with the model's parameters in ``weights`` (by the model's names) replaced, and the same
    replacements by the graph's names, for ``run``'s ``params``."""
    params = {graph_name(gm, n): w for n, w in weights.items()}
    env = {n: params[n.target] if n.op == "get_attr" and n.target in params else v for n, v in front.items()}
    return env, params


def split(gm: fx.GraphModule, param_name: str | tuple[str, ...]) -> Split:
    """The roots, downstream part and frontier of the parameter ``param_name`` or parameters (``ValueError`` if
    unused)."""
    roots = roots_of(gm, param_name)
    if not roots:
        raise ValueError(f"no node of the traced graph reads {param_name}")
    down: set[fx.Node] = set(roots)
    for node in gm.graph.nodes:
        if node not in down and any(a in down for a in node.all_input_nodes):
            down.add(node)
    order = list(gm.graph.nodes)
    downstream = [n for n in order if n in down]
    needed = {a for n in downstream for a in n.all_input_nodes if a not in down}
    frontier = [n for n in order if n in needed]
    reaches = any(n.op == "output" for n in downstream)
    return Split(roots=[n for n in order if n in set(roots)], downstream=downstream, frontier=frontier,
                 reaches_output=reaches)


def input_dependent(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes whose value depends on the model's inputs (the rest are constants of the graph)."""
    cached = getattr(gm, "_prunescope_input_dependent", None)
    if cached is None:
        cached = set()
        for node in gm.graph.nodes:
            if node.op == "placeholder" or any(a in cached for a in node.all_input_nodes):
                cached.add(node)
        gm._prunescope_input_dependent = cached
    return cached


def is_batch_size(node: fx.Node) -> bool:
    """Whether ``node`` reads the size of dimension 0 of a tensor (``torch.export``'s ``sym_size(x, 0)``): the
    batch size a traced program passes on to its reshapes."""
    return node.op == "call_function" and node.target is torch.ops.aten.sym_size.int and len(node.args) > 1 \
        and node.args[1] == 0


_ROWWISE = {"aten.addmm.default": 1, "aten.mm.default": 0, "aten.linear.default": 0}  # operand read row by row
_VIEWS = {"aten.view.default", "aten._unsafe_view.default", "aten.reshape.default"}


def rows_by_sample(gm: fx.GraphModule, root: fx.Node) -> bool:
    """Whether the rows of ``root``'s output are the samples' rows in sample order, so that variants stacked
    along them stack along the batch: a matmul that reads, row by row, a batch-first tensor with its leading
    dimensions merged (``x.view(-1, features)`` of (batch, positions, features), as transformers' ``Conv1D``
    does). Known from the shapes ``torch.export`` records (``meta['val']``); a graph without them says no."""
    pos = _ROWWISE.get(str(root.target))
    batch = _batch_symbol(gm)
    data = root.args[pos] if pos is not None and len(root.args) > pos else None
    if batch is None or not isinstance(data, fx.Node) or str(data.target) not in _VIEWS:
        return False
    src = data.args[0]
    merged, whole = data.meta.get("val"), getattr(src, "meta", {}).get("val")
    if not isinstance(merged, torch.Tensor) or not isinstance(whole, torch.Tensor) or whole.dim() < merged.dim():
        return False
    kept = whole.dim() - merged.dim() + 1  # leading dimensions merged into the first
    return str(whole.shape[0]) == batch and [str(d) for d in merged.shape[1:]] == [str(d) for d in whole.shape[kept:]]


def _batch_symbol(gm: fx.GraphModule) -> str | None:
    """The symbolic batch size of an exported graph's first input (``s0``), or ``None`` when it has none."""
    first = next((n for n in gm.graph.nodes if n.op == "placeholder"), None)
    val = first.meta.get("val") if first is not None else None
    if not isinstance(val, torch.Tensor) or not val.dim() or isinstance(val.shape[0], int):
        return None
    return str(val.shape[0])


def run_node(gm: fx.GraphModule, node: fx.Node, env: dict[fx.Node, object],
             params: dict[str, torch.Tensor] | None = None) -> object:
    """Execute one node with its inputs taken from ``env``; ``params`` replaces parameters by name (a pruned
    weight) for this call only, without touching the model."""
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda a: env[a])
    if node.op == "get_attr":
        if params and node.target in params:
            return params[node.target]
        obj: object = gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if params:
            prefix = node.target + "."
            local = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
            if local:
                return torch.func.functional_call(module, local, tuple(args), kwargs)
        return module(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.op == "output":
        return args[0]
    raise ValueError(f"cannot run a {node.op} node here")


def run(gm: fx.GraphModule, nodes: list[fx.Node], env: dict[fx.Node, object], keep: set[fx.Node],
        params: dict[str, torch.Tensor] | None = None) -> None:
    """Execute ``nodes`` in order into ``env``, dropping each value after its last use unless it is in ``keep``."""
    last_use = {}
    for i, node in enumerate(nodes):
        for a in node.all_input_nodes:
            last_use[a] = i
    for i, node in enumerate(nodes):
        env[node] = run_node(gm, node, env, params)
        for a in node.all_input_nodes:
            if last_use[a] == i and a not in keep:
                env.pop(a, None)


def evaluate(gm: fx.GraphModule, targets: list[fx.Node], known: dict[fx.Node, object],
             inputs: tuple[object, ...]) -> dict[fx.Node, object]:
    """Dense values of ``targets``, computing only what ``known`` does not already hold.

    Placeholders take ``inputs`` in order (a missing one its default).
    """
    todo: set[fx.Node] = set()
    stack = [t for t in targets if t not in known]
    while stack:
        node = stack.pop()
        if node not in todo:
            todo.add(node)
            stack.extend(a for a in node.all_input_nodes if a not in known)
    env = dict(known)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i, node in enumerate(placeholders):
        if node in todo:
            env[node] = inputs[i] if i < len(inputs) else (node.args[0] if node.args else None)
    order = [n for n in gm.graph.nodes if n in todo and n.op != "placeholder"]
    run(gm, order, env, keep=set(targets))
    return {t: env[t] for t in targets}
