"""The glimpse token: one learned position appended after the prompt whose attention finds what matters.

Spec §3 steps 2-3: its input embedding is `Dropout(RMSNorm(W_le·e_0 + b_le))` and before every later decoder
layer l the same transform of `e_l` is added to its hidden state ("deep glimpse prompts"); `W_le` and the norm
are shared across layers. Only the glimpse row carries these additions, so the prompt's KV stays exactly the
frozen model's (causal attention: earlier tokens never see the glimpse).
"""
from __future__ import annotations

import torch
from torch import nn


class GlimpseToken(nn.Module):
    def __init__(self, n_layers: int, hidden: int, eps: float = 1e-6, dropout: float = 0.0):
        super().__init__()
        self.n_layers = n_layers
        self.embeddings = nn.Parameter(torch.randn(n_layers, hidden) * 0.02)
        self.proj = nn.Linear(hidden, hidden)
        self.norm = nn.RMSNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def layer_embedding(self, layer: int) -> torch.Tensor:
        """`[hidden]`: the input embedding for layer 0, the addition before layer `layer` otherwise."""
        return self.dropout(self.norm(self.proj(self.embeddings[layer])))

    def add_before_layer(self, layer: int, hidden: torch.Tensor, row: int = -1) -> torch.Tensor:
        """`hidden [L, D]` with the layer's glimpse embedding added at `row` (layer 0: the input is set there
        already, nothing is added). Out of place, so autograd sees it."""
        if layer == 0:
            return hidden
        add = torch.zeros_like(hidden)
        add[row] = self.layer_embedding(layer).to(hidden.dtype)
        return hidden + add
