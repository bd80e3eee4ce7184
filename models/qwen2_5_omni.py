"""Qwen2.5-Omni thinker (Qwen2.5 vision tower + Whisper-style audio tower + Qwen2.5 LLM), OmniZip's family.

Only the thinker (the part that reads audio and video and writes text) is adapted; a full Omni checkpoint is
loaded with its talker disabled. Streaming layout follows Omni's audio-in-video convention: after the prefix
`<|vision_bos|><|audio_bos|>` the stream holds video frames and audio chunks in time order, all on one M-RoPE
time axis of 25 ids per second (one audio token per 40 ms); a question closes both.
"""
from __future__ import annotations

import numpy as np
import torch
from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration, WhisperFeatureExtractor

from vlmedge.errors import InputError
from vlmedge.models import preprocess
from vlmedge.models.base import Adapter, AudioTokens, PromptFormat
from vlmedge.models.positions import MRope
from vlmedge.models.qwen2_5_vl import DEFAULT_FRAME_SIZE, tiny_qwen_text, tiny_qwen_vision
from vlmedge.models.qwen_vision import QwenVisionMixin
from vlmedge.models.tokenizer import build_word_tokenizer

SAMPLE_RATE = 16000


def log_mel(extractor, wave) -> np.ndarray:
    """16 kHz mono float samples → log-mel `[mel_bins, frames]` float32 with `extractor` (Whisper's, as Omni's
    processor uses); shared by the torch adapter and exports (runtime/backends/onnxruntime.py)."""
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().numpy()
    if not isinstance(wave, np.ndarray) or wave.ndim != 1 or not np.issubdtype(wave.dtype, np.floating):
        shape = getattr(wave, "shape", None)
        raise InputError(f"audio must be a 1-D float array of {SAMPLE_RATE} Hz mono samples in [-1, 1], "
                         f"got {type(wave).__name__} with shape {shape}")
    if wave.shape[0] < 640:  # one LLM audio token spans 40 ms
        raise InputError(f"audio chunk too short: {wave.shape[0]} samples; at least 640 (40 ms at 16 kHz)")
    feats = extractor(wave.astype(np.float32), sampling_rate=SAMPLE_RATE, padding="longest", truncation=False,
                      return_tensors="np")["input_features"][0]
    # Whisper's extractor returns one frame more than samples/hop; a token is only complete every 4 frames.
    n = wave.shape[0] // 160
    return np.ascontiguousarray(feats[:, : n - n % 4 if n >= 4 else n], dtype=np.float32)


def omni_prompt(tokenizer, audio: bool = True) -> PromptFormat:
    # Omni's tokenizer calls the vision delimiters <|vision_bos|>/<|vision_eos|>; small word-level ones reuse
    # Qwen2.5-VL's names. Either way the ids are those in the model config.
    vocab = tokenizer.get_vocab()
    vb, ve = ("<|vision_bos|>", "<|vision_eos|>") if "<|vision_bos|>" in vocab else ("<|vision_start|>", "<|vision_end|>")
    ab, ae = ("<|audio_bos|>", "<|audio_eos|>") if audio else ("", "")
    return PromptFormat(
        prefix=f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{vb}{ab}",
        frame_open="", frame_close="",
        question_template=f"{ae}{ve}{{question}}<|im_end|>\n<|im_start|>assistant\n",
        stop=("<|im_end|>", "<|endoftext|>"),
    )


def special_token_ids(tok) -> dict:
    """The thinker config's special-token fields, from a tokenizer that holds Qwen2.5-Omni's marker tokens."""
    ids = tok.convert_tokens_to_ids
    return dict(audio_token_index=ids("<|AUDIO|>"), image_token_index=ids("<|image_pad|>"),
                video_token_index=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                vision_end_token_id=ids("<|vision_end|>"), audio_start_token_id=ids("<|audio_bos|>"),
                audio_end_token_id=ids("<|audio_eos|>"))


class Qwen25OmniAdapter(QwenVisionMixin, Adapter):
    family = "qwen2_5_omni"
    model_types = ("qwen2_5_omni_thinker", "qwen2_5_omni")
    has_audio = True

    def __init__(self, model, tokenizer, frame_size=DEFAULT_FRAME_SIZE,
                 pixel_norm: preprocess.PixelNorm = preprocess.CLIP_NORM):
        super().__init__(model, tokenizer, omni_prompt(tokenizer),
                         MRope(tokens_per_second=model.config.position_id_per_seconds), pixel_norm)
        self._frame_size = self._check_frame_size(frame_size)
        acfg = model.config.audio_config
        self.features = WhisperFeatureExtractor(feature_size=acfg.num_mel_bins, sampling_rate=SAMPLE_RATE)

    @classmethod
    def tiny(cls, seed: int = 0, frame_size=(32, 48), words=None) -> "Qwen25OmniAdapter":
        torch.manual_seed(seed)
        tok = build_word_tokenizer(words) if words is not None else build_word_tokenizer()
        audio = dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32,
                     output_dim=64, n_window=50, max_source_positions=1500)
        cfg = Qwen2_5OmniThinkerConfig(
            audio_config=audio, vision_config=tiny_qwen_vision(), text_config=tiny_qwen_text(tok),
            tie_word_embeddings=True, **special_token_ids(tok))
        model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(cfg, attn_implementation="sdpa")
        return cls(model, tok, frame_size=frame_size)

    @classmethod
    def from_model(cls, model, tokenizer, model_dir=None, frame_size=None):
        frame_size = frame_size or preprocess.frame_size_from_dir(model_dir, DEFAULT_FRAME_SIZE)
        if hasattr(model, "thinker"):  # a full Omni checkpoint: keep only the thinker
            model = model.thinker
        return cls(model, tokenizer, frame_size=frame_size,
                   pixel_norm=preprocess.norm_from_dir(model_dir, preprocess.CLIP_NORM))

    # ----- audio -----
    def mel(self, wave) -> torch.Tensor:
        """16 kHz mono float samples → log-mel `[mel_bins, frames]` (10 ms hop), as Omni's processor computes."""
        return torch.from_numpy(log_mel(self.features, wave))

    @torch.no_grad()
    def encode_audio(self, wave) -> AudioTokens:
        mel = self.mel(wave).to(self.dtype)
        tower = self.model.model.audio_tower
        captured = {}

        def grab(module, args, kwargs):
            captured["h"] = kwargs.get("hidden_states", args[0] if args else None)
            captured["cu"] = kwargs.get("cu_seqlens")

        handle = tower.layers[-1].self_attn.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            out = tower(mel, feature_lens=torch.tensor([mel.shape[1]]))
        finally:
            handle.remove()
        attn = tower.layers[-1].self_attn
        h = captured["h"]
        q = attn.q_proj(h).reshape(h.shape[0], attn.num_heads, -1).transpose(0, 1)
        k = attn.k_proj(h).reshape(h.shape[0], attn.num_heads, -1).transpose(0, 1)
        cu = captured["cu"].tolist()
        return AudioTokens(features=out.last_hidden_state, q=q, k=k,
                           chunks=list(zip(cu[:-1], cu[1:])), seconds_per_token=0.04)
