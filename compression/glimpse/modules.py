"""GlimpsePrune's trained add-on for one model: the glimpse token and the VIP, with where they hook in.

Stored beside the checkpoint in `glimpse/` (`config.json` + `glimpse.safetensors`), like the released
`new_modules_gp.pt`: the frozen model is never rewritten. The config records the model it was trained for
(family, LLM and ViT shapes), so loading it onto another model fails with a clear message instead of pruning
with a predictor that never saw that model's attention.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from vlmedge.compression.glimpse.token import GlimpseToken
from vlmedge.compression.glimpse.vip import VIP, VIPConfig
from vlmedge.errors import ModelFileError

FOLDER = "glimpse"


@dataclass
class GlimpseConfig:
    family: str
    llm_layers: int
    llm_hidden: int
    llm_heads: int
    vit_dim: int
    select_layer: int  # K: the glimpse row is read here and layers 0..K are pruned once (spec §3 steps 4-5)
    taps: list[int]  # ViT blocks feeding the VIP, deep → shallow
    vip: dict = field(default_factory=dict)  # VIPConfig fields
    trained: dict = field(default_factory=dict)  # how it was trained (steps, minutes, final losses)

    @classmethod
    def for_adapter(cls, adapter) -> "GlimpseConfig":
        """Defaults for a model without a released config (spec §10): the glimpse layer and the prune point
        near 2/3 of the LLM depth (Qwen2.5-VL-7B: 18 of 28), four ViT taps spread evenly over the depth
        (32 blocks → 31, 23, 15, 7)."""
        lm_cfg = adapter.language_model().config
        n = int(lm_cfg.num_hidden_layers)
        k, taps = default_layout(n, len(adapter.vision_blocks()))
        vit_dim = _vit_dim(adapter)
        vip = VIPConfig.for_model(int(lm_cfg.num_attention_heads), vit_dim, len(taps), int(lm_cfg.hidden_size))
        return cls(family=adapter.family, llm_layers=n, llm_hidden=int(lm_cfg.hidden_size),
                   llm_heads=int(lm_cfg.num_attention_heads), vit_dim=vit_dim, select_layer=k, taps=taps,
                   vip=asdict(vip))

    def check(self, adapter, where: str = "") -> None:
        lm_cfg = adapter.language_model().config
        have = (adapter.family, int(lm_cfg.num_hidden_layers), int(lm_cfg.hidden_size),
                int(lm_cfg.num_attention_heads), _vit_dim(adapter))
        want = (self.family, self.llm_layers, self.llm_hidden, self.llm_heads, self.vit_dim)
        if have != want:
            raise ModelFileError(f"the GlimpsePrune modules{' in ' + where if where else ''} were trained for a "
                                 f"{want[0]} model (LLM {want[1]} layers x {want[2]}, {want[3]} heads, ViT {want[4]}) "
                                 f"but this one is {have[0]} ({have[1]} x {have[2]}, {have[3]} heads, ViT {have[4]}); "
                                 "train a predictor for it with `vlmedge train-vip`")


def default_layout(llm_layers: int, vit_blocks: int) -> tuple[int, list[int]]:
    """(K, taps): K = round(2/3·L) − 1 (28 → 18 and 36 → 23 as released; at least one layer after it), taps at
    the ends of the four quarters of the ViT, deep → shallow (fewer when the ViT has fewer than four blocks)."""
    k = max(0, min(llm_layers - 2, round(2 * llm_layers / 3) - 1)) if llm_layers > 1 else 0
    taps = sorted({max(0, vit_blocks * (4 - j) // 4 - 1) for j in range(4)}, reverse=True)
    return k, taps


def _vit_dim(adapter) -> int:
    vc = getattr(adapter.model.config, "vision_config", None)
    return int(getattr(vc, "hidden_size", None) or getattr(vc, "embed_dim"))


class GlimpseModules(nn.Module):
    """Everything GlimpsePrune trains: the glimpse token (input + per-layer embeddings) and the VIP."""

    def __init__(self, cfg: GlimpseConfig):
        super().__init__()
        self.cfg = cfg
        self.token = GlimpseToken(cfg.llm_layers, cfg.llm_hidden)
        self.vip = VIP(VIPConfig(**cfg.vip))

    @classmethod
    def for_adapter(cls, adapter, seed: int = 0) -> "GlimpseModules":
        torch.manual_seed(seed)
        return cls(GlimpseConfig.for_adapter(adapter))

    def save(self, model_dir: str) -> str:
        from vlmedge.models.module_folder import save_folder

        return save_folder(self, self.cfg, model_dir, FOLDER, "glimpse.safetensors")

    @classmethod
    def load(cls, path: str, adapter=None) -> "GlimpseModules":
        """From a `glimpse/` folder (or the model folder holding one); checked against `adapter` when given."""
        from vlmedge.models.module_folder import load_weights, read_folder

        path, cfg = read_folder(path, FOLDER, "glimpse.safetensors",
                                "train them with `vlmedge train-vip --model DIR` or pass glimpse:weights=DIR")
        cfg = GlimpseConfig(**cfg)
        if adapter is not None:
            cfg.check(adapter, path)
        return load_weights(cls(cfg), path, "glimpse.safetensors")
