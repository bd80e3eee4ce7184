"""A learned retrieval score for offloaded blocks: which stored frames show what a question names.

Why learned: on the bundled reference model no score read off the model finds a recall question's evidence among
~170 stored blocks — ReKV's middle-layer q·k, every head standardised, blocks moved next to the question, the
projected visual tokens against the question's word embeddings, or asking the model itself "is there a <name> ?"
per block all rank it near chance (docs/bench/soak.md). The model's attention was never trained to look things
up across a long stream. Its cached *values* do carry what is in a frame, though, and a probe on them finds it.

The score reads only what the session already holds: every block's per-layer values (live or offloaded, int8 or
not; values carry no RoPE, so a block scores the same wherever it sits) and the question's input embeddings.
A frame token's values over the chosen layers `[L·kv_heads·head_dim]` are standardised and projected to `rank`
dimensions; the question is one `rank`-vector, a learned softmax gate over its token embeddings (so the words
that name something count and the template's words do not) times a projection. A block's score is its best
token's dot product with the question: something the question names is usually a few tokens of one frame.
Trained with the LLM frozen (`vlmedge train-retrieval`, models/training/retrieval.py); stored beside the
checkpoint in `retrieval/` (`config.json` + `scorer.safetensors`), as GlimpsePrune's modules are in `glimpse/`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

SUBDIR = "retrieval"
WEIGHTS = "scorer.safetensors"


@dataclass
class ScorerConfig:
    family: str
    layers: list[int]          # LLM layers whose values a block token is read from
    kv_dim: int                # kv_heads * head_dim of one layer
    hidden: int                # the LLM's embedding width (the question side)
    rank: int = 64
    trained: dict = field(default_factory=dict)

    @classmethod
    def for_adapter(cls, adapter, rank: int = 64, max_layers: int = 4) -> "ScorerConfig":
        tc = adapter.text_config
        n = tc.num_hidden_layers
        # up to `max_layers` spread over the depth, the last included: early layers hold colour and form, later
        # ones what the frame's tokens made of each other; more layers cost memory bandwidth, not memory
        layers = sorted({round(i * (n - 1) / max(1, min(n, max_layers) - 1)) for i in range(min(n, max_layers))})
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        return cls(family=adapter.family, layers=layers, kv_dim=tc.num_key_value_heads * head_dim,
                   hidden=tc.hidden_size, rank=rank)


class RetrievalScorer(nn.Module):
    def __init__(self, cfg: ScorerConfig):
        super().__init__()
        self.cfg = cfg
        din = len(cfg.layers) * cfg.kv_dim
        self.token = nn.Linear(din, cfg.rank)
        self.query_proj = nn.Linear(cfg.hidden, cfg.rank)
        self.gate = nn.Linear(cfg.hidden, 1)
        self.register_buffer("mean", torch.zeros(din))
        self.register_buffer("std", torch.ones(din))

    @classmethod
    def for_adapter(cls, adapter, rank: int = 64, seed: int = 0) -> "RetrievalScorer":
        torch.manual_seed(seed)
        return cls(ScorerConfig.for_adapter(adapter, rank))

    def features(self, values) -> torch.Tensor:
        """`[n, L·kv_dim]` from a block's per-layer values (indexable by layer, each `[1, kv_heads, n, hd]`)."""
        v = torch.stack([values[m][0].float() for m in self.cfg.layers])  # [L, kvh, n, hd]
        return v.permute(2, 0, 1, 3).reshape(v.shape[2], -1)

    def tokens(self, feats: torch.Tensor) -> torch.Tensor:
        return self.token((feats - self.mean) / self.std)

    def query(self, embeds: torch.Tensor) -> torch.Tensor:
        """`[rank]` from the question's input embeddings `[n, hidden]`."""
        e = embeds.float()
        w = torch.softmax(self.gate(e).squeeze(-1), 0)
        return (w[:, None] * self.query_proj(e)).sum(0)

    def logits(self, tokens: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Per-token scores of projected tokens `[..., n, rank]` against a query `[rank]` (`[..., n]`) or several
        as columns `[rank, Q]` (`[..., n, Q]`)."""
        return tokens @ q / math.sqrt(self.cfg.rank)

    @torch.no_grad()
    def score(self, embeds: torch.Tensor, blocks_values: list) -> torch.Tensor:
        """One score per block: the best token's logit. `blocks_values`: per block, its per-layer values."""
        if not blocks_values:
            return torch.zeros(0)
        feats = [self.features(v) for v in blocks_values]
        # one projection over every candidate's tokens (this runs per question over ~170 blocks), then each
        # block's best token
        logits = self.logits(self.tokens(torch.cat(feats)), self.query(embeds))
        return torch.stack([part.max() for part in logits.split([len(f) for f in feats])])

    def check(self, adapter, where: str = "") -> None:
        from vlmedge.errors import ModelFileError

        want = ScorerConfig.for_adapter(adapter, self.cfg.rank)
        if (want.kv_dim, want.hidden) != (self.cfg.kv_dim, self.cfg.hidden) or \
                max(self.cfg.layers) >= adapter.text_config.num_hidden_layers:
            raise ModelFileError(f"the retrieval scorer{where} was trained for another model (layers "
                                 f"{self.cfg.layers}, kv width {self.cfg.kv_dim}, hidden {self.cfg.hidden}); "
                                 "train one for this model with `vlmedge train-retrieval --model DIR`")

    def save(self, model_dir: str) -> str:
        from vlmedge.models.module_folder import save_folder

        return save_folder(self, self.cfg, model_dir, SUBDIR, WEIGHTS)

    @classmethod
    def load(cls, path: str, adapter=None) -> "RetrievalScorer":
        """From a `retrieval/` folder or the model folder holding one; checked against `adapter` when given."""
        from vlmedge.models.module_folder import load_weights, read_folder

        path, cfg = read_folder(path, SUBDIR, WEIGHTS, "train them with `vlmedge train-retrieval --model DIR`, or "
                                                       "use retrieval_score='middle-layer'")
        mod = load_weights(cls(ScorerConfig(**cfg)), path, WEIGHTS)
        if adapter is not None:
            mod.check(adapter, f" in {path}")
        return mod
