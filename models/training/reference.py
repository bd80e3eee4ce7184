"""Shapes of the bundled reference models: small, real architectures that train from scratch on 2 CPU cores.

LLaVA-OneVision: SigLIP 96x96 with 8-px patches (a 12x12 grid, 144 tokens + newline per frame) into a
4-layer Qwen2: the shape measured to learn on 2 CPU cores (shared/notes). A 12-px-patch variant (64 tokens)
showed no visual grounding after 22 minutes of training (its ViT residual stream grew to norm ~190 with
tokens nearly identical), so the known-good shape is used; a small (12-px) object spans 2x2 to 3x3 patches.
Qwen2.5-Omni thinker: the Qwen2.5 vision tower at 8-px patches, merged 2x2 (6x6 = 36 tokens per frame), a
2-layer Whisper-style audio tower on 128 mel bins, and the same 4-layer LLM with M-RoPE.
"""
from __future__ import annotations

import torch
from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                          Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration, SiglipVisionConfig)

from vlmedge.models.tokenizer import BASE_WORDS, build_word_tokenizer

FRAME = 96
# SigLIP's learned position embedding starts at std 1/sqrt(width) (row norm ~1), while a saturated object's
# patch embedding has norm ~10: position is buried under content from the first block on, and a tower trained
# from scratch did not dig it out (a dense quadrant probe stayed at chance, 0.21, after 4.6 minutes of
# dense-only training). Starting it 8x larger, the same probe read 0.92 after 2 minutes. Only the initial
# values change; the architecture is the checkpoint format's.
POSITION_INIT_GAIN = 8.0


def reference_tokenizer():
    from vlmedge.models import camworld

    return build_word_tokenizer(list(BASE_WORDS) + camworld.vocabulary())


def reference_words() -> list[str]:
    """The reference tokenizer's words in id order. `get_vocab()` is a hash map whose order changes from process to
    process; a tiny model built from it got different token ids, and so different training, in every run."""
    vocab = reference_tokenizer().get_vocab()
    return sorted(vocab, key=vocab.__getitem__)


def _text(tok, **extra) -> dict:
    return dict(vocab_size=len(tok), hidden_size=192, intermediate_size=768, num_hidden_layers=4,
                num_attention_heads=6, num_key_value_heads=3, max_position_embeddings=4096, tie_word_embeddings=True,
                bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)


def llava_onevision(seed: int):
    from vlmedge.models.llava_onevision import LlavaOneVisionAdapter

    torch.manual_seed(seed)
    tok = reference_tokenizer()
    vision = SiglipVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                                image_size=FRAME, patch_size=8, vision_use_head=False)
    cfg = LlavaOnevisionConfig(
        vision_config=vision, text_config=Qwen2Config(**_text(tok)), vision_feature_select_strategy="full",
        vision_feature_layer=-1, image_grid_pinpoints=[[FRAME, FRAME]], tie_word_embeddings=True,
        image_token_id=tok.convert_tokens_to_ids("<image>"), video_token_id=tok.convert_tokens_to_ids("<video>"))
    model = LlavaOnevisionForConditionalGeneration._from_config(cfg, attn_implementation="sdpa")
    with torch.no_grad():
        model.model.vision_tower.embeddings.position_embedding.weight.mul_(POSITION_INIT_GAIN)
    return LlavaOneVisionAdapter(model, tok)


def qwen2_5_omni(seed: int):
    from vlmedge.models.qwen2_5_omni import Qwen25OmniAdapter, special_token_ids

    torch.manual_seed(seed)
    tok = reference_tokenizer()
    vision = dict(depth=4, hidden_size=128, intermediate_size=512, num_heads=4, patch_size=8, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=48, fullatt_block_indexes=[1, 3], out_hidden_size=192)
    audio = dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=512, d_model=128,
                 output_dim=192, n_window=50, max_source_positions=1500)
    text = _text(tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]})
    cfg = Qwen2_5OmniThinkerConfig(
        audio_config=audio, vision_config=vision, text_config=text, tie_word_embeddings=True,
        **special_token_ids(tok))
    model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(cfg, attn_implementation="sdpa")
    return Qwen25OmniAdapter(model, tok, frame_size=(FRAME, FRAME))


BUILDERS = {"llava_onevision": llava_onevision, "qwen2_5_omni": qwen2_5_omni}
