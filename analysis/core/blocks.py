"""Transformer blocks in layer names, in one table: which block a layer belongs to, and what it does there.

A layer name such as ``model.layers.3.self_attn.q_proj`` is split at the block index into the block
(``model.layers.3``) and the name inside it (``self_attn.q_proj``), whose role is looked up in ``ROLES``: a query,
key or value projection (``q``, ``k``, ``v``), a fused one (``qkv``), the attention output (``o``), or an MLP's
``gate``, ``up`` and ``down`` projections. The names are those of Hugging Face transformers (BERT, RoBERTa,
DistilBERT, GPT-2, GPT-NeoX, OPT, Llama and its kin, ViT) and torchvision's ViT. The views (a block x projection
heatmap), OWL's per-block allocation and the head and neuron granularities all read them here.
"""

from __future__ import annotations

import re

ROLES: dict[str, tuple[str, ...]] = {
    "q": ("attention.self.query", "attention.attention.query", "self_attn.q_proj", "attn.q_proj", "attention.q_lin",
          "attn.q", "attention.q_proj"),
    "k": ("attention.self.key", "attention.attention.key", "self_attn.k_proj", "attn.k_proj", "attention.k_lin",
          "attn.k", "attention.k_proj"),
    "v": ("attention.self.value", "attention.attention.value", "self_attn.v_proj", "attn.v_proj", "attention.v_lin",
          "attn.v", "attention.v_proj"),
    "qkv": ("attn.c_attn", "self_attention.in_proj", "self_attn.in_proj", "attention.query_key_value",
            "self_attention.query_key_value", "attn.qkv", "attn.Wqkv", "self_attn.qkv_proj"),
    "o": ("attention.output.dense", "self_attn.o_proj", "self_attn.out_proj", "attn.c_proj", "attn.o_proj",
          "self_attention.out_proj", "attention.out_lin", "attention.dense", "self_attention.dense", "attn.proj",
          "attn.out_proj", "self_attn.dense", "attention.o_proj"),
    "gate": ("mlp.gate_proj", "mlp.w1", "feed_forward.w1"),
    "up": ("intermediate.dense", "mlp.up_proj", "mlp.c_fc", "fc1", "mlp.fc1", "mlp.0", "ffn.lin1",
           "mlp.dense_h_to_4h", "mlp.w3", "feed_forward.w3", "mlp.linear_1"),
    "down": ("output.dense", "mlp.down_proj", "mlp.c_proj", "fc2", "mlp.fc2", "mlp.3", "ffn.lin2",
             "mlp.dense_4h_to_h", "mlp.w2", "feed_forward.w2", "mlp.linear_2"),
}
ROLE_ORDER = ("q", "k", "v", "qkv", "o", "gate", "up", "down")  # the heatmap's columns
# Fused projections whose rows interleave q, k and v head by head (GPT-NeoX, Falcon), not [q | k | v]: their heads
# cannot be told apart from the name, so the head granularity leaves them out.
INTERLEAVED_QKV = ("attention.query_key_value", "self_attention.query_key_value")
ATTENTION, MLP = frozenset({"q", "k", "v", "qkv", "o"}), frozenset({"gate", "up", "down"})
_BY_SUFFIX = {suffix: role for role, suffixes in ROLES.items() for suffix in suffixes}
_BLOCK = re.compile(r"^(.*?(?:^|\.)(?:h|layer|layers|blocks?|encoder_layer_|decoder_layer_)\.?\d+)\.(.+)$")


def split_name(name: str) -> tuple[str, str] | None:
    """``(block, name inside it)`` of a layer name, or ``None`` outside any numbered block."""
    found = _BLOCK.match(name)
    return (found.group(1), found.group(2)) if found else None


def block_of(name: str) -> str | None:
    """The block a layer belongs to (``transformer.h.3``), or ``None`` outside any numbered block."""
    parts = split_name(name)
    return parts[0] if parts else None


def role_of(name: str) -> str | None:
    """What a layer does in its block (``q``, ``k``, ``v``, ``qkv``, ``o``, ``gate``, ``up``, ``down``), or ``None``
    for a name the table does not know."""
    parts = split_name(name)
    return _BY_SUFFIX.get(parts[1]) if parts else None


def column_of(name: str) -> str:
    """The heatmap column of a layer: its role, or its name inside the block when the role is unknown."""
    parts = split_name(name)
    return (_BY_SUFFIX.get(parts[1]) or parts[1]) if parts else name


def block_index(block: str) -> int:
    """The number of a block (``transformer.h.11`` -> 11), to sort blocks by depth."""
    digits = re.findall(r"\d+", block)
    return int(digits[-1]) if digits else 0
