"""Attention with some of its heads removed: what a head-pruned ``nn.MultiheadAttention`` becomes.

``nn.MultiheadAttention`` ties its heads to its embedding width (``embed_dim = num_heads * head_dim``), so it
cannot hold fewer heads of the same size. ``HeadsAttention`` can: its packed input projection keeps the query, key
and value rows of the heads that stay, its output projection the matching columns, and each head attends exactly
as before (same head size, same ``1/sqrt(head_size)`` scale). A head removed from the original, with its rows and
columns set to zero instead, contributes nothing either, so the two compute the same function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class HeadsAttention(nn.Module):
    """Self- or cross-attention with ``num_heads`` heads of ``head_dim`` each, reading and writing ``embed_dim``.

    The parameters keep ``nn.MultiheadAttention``'s names (``in_proj_weight``, ``in_proj_bias``, ``out_proj``) and
    the call keeps its signature; attention weights are not returned (``None``), masks are 2-D or per batch.
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, batch_first: bool, dropout: float,
                 in_proj_weight: nn.Parameter, in_proj_bias: nn.Parameter | None, out_proj: nn.Linear) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        self.in_proj_weight = in_proj_weight
        self.in_proj_bias = in_proj_bias
        self.out_proj = out_proj

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(0 if self.batch_first else 1) for t in (query, key, value))
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        biases = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        q, k, v = (self._heads(F.linear(t, w, b)) for t, w, b in zip((query, key, value),
                                                                        self.in_proj_weight.chunk(3), biases))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        scores = scores + _additive(attn_mask, key_padding_mask, is_causal, scores)
        attn = F.dropout(scores.softmax(dim=-1), self.dropout, self.training)
        out = self.out_proj((attn @ v).transpose(1, 2).flatten(2))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return (out.squeeze(0 if self.batch_first else 1) if unbatched else out), None

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(batch, length, heads * head_dim) -> (batch, heads, length, head_dim)."""
        return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)


def _additive(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, is_causal: bool,
              scores: torch.Tensor) -> torch.Tensor | float:
    """The masks as one additive term for the scores (batch, heads, length, source): 0 or -inf."""
    total: torch.Tensor | float = 0.0
    length, source = scores.shape[-2:]
    if is_causal and attn_mask is None:
        attn_mask = torch.ones(length, source, dtype=torch.bool, device=scores.device).triu(1)
    if attn_mask is not None:
        if attn_mask.dim() != 2:
            raise ValueError("a head-pruned attention takes a 2-D attention mask; a per-head mask names heads "
                             "that were removed")
        total = total + _as_float(attn_mask, scores)
    if key_padding_mask is not None:
        total = total + _as_float(key_padding_mask, scores)[:, None, None, :]
    return total


def _as_float(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A boolean mask (True = not attended) as 0/-inf; a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(mask, float("-inf"))
    return mask.to(like.dtype)


def head_rows(heads: list[int], num_heads: int, head_dim: int) -> torch.Tensor:
    """Rows of a packed query/key/value projection that belong to ``heads`` (in query, key, value order)."""
    embed = num_heads * head_dim
    per_head = [torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads]
    one = torch.cat(per_head) if per_head else torch.zeros(0, dtype=torch.long)
    return torch.cat([one + part * embed for part in range(3)])


def head_columns(heads: list[int], head_dim: int) -> torch.Tensor:
    """Columns of the output projection that read ``heads``."""
    per_head = [torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads]
    return torch.cat(per_head) if per_head else torch.zeros(0, dtype=torch.long)


def supports_heads(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.MultiheadAttention`` whose heads ``keep_heads`` can remove (packed projection,
    no extra key/value biases)."""
    return (isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim and module.bias_k is None
            and module.in_proj_weight is not None)


def keep_heads(mha: nn.MultiheadAttention, heads: list[int]) -> HeadsAttention:
    """A ``HeadsAttention`` holding ``heads`` of ``mha`` (their rows and columns, selected from its tensors)."""
    rows, cols = head_rows(heads, mha.num_heads, mha.head_dim), head_columns(heads, mha.head_dim)
    weight = nn.Parameter(mha.in_proj_weight.detach().index_select(0, rows))
    bias = None if mha.in_proj_bias is None else nn.Parameter(mha.in_proj_bias.detach().index_select(0, rows))
    out_proj = nn.Linear(len(cols), mha.embed_dim, bias=mha.out_proj.bias is not None)
    out_proj.weight = nn.Parameter(mha.out_proj.weight.detach().index_select(1, cols))
    if mha.out_proj.bias is not None:
        out_proj.bias = nn.Parameter(mha.out_proj.bias.detach().clone())
    return HeadsAttention(mha.embed_dim, len(heads), mha.head_dim, mha.batch_first, mha.dropout, weight, bias,
                          out_proj).train(mha.training)
