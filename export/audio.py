"""The omni models' audio encoder as a graph (`audio`): one second of log-mel in, LLM-space audio tokens and the
last encoder layer's queries/keys out (what OmniZip's audio saliency reads, see models/base.py AudioTokens).

The session feeds audio a second at a time (runtime/playback.py, pipelines/audio_track.py), so the graph takes
exactly one second: 100 mel frames, one attention chunk. Everything the encoder derives from the length (chunk
split, valid and pooling indices, chunk boundaries) is computed once here for that length and handed to the
encoder as the precomputed values its helpers accept, which leaves the graph static. The mel spectrogram
itself is computed outside the graph by the model's own feature extractor, saved beside the graphs.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from vlmedge.export.stages import (ExportJob, StageExporter, _stage_spec, check_graph, export_onnx, register_stage,
                                   sdpa_as_4d)

CHUNK_S = 1.0
FEATURES_DIR = "audio_preprocessor"


class AudioGraph(nn.Module):
    """mel `[mel_bins, F]` → features `[tokens, D]`, q `[heads, T_enc, head_dim]`, k (last encoder layer)."""

    def __init__(self, adapter, frames: int):
        super().__init__()
        from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni as omni

        self.tower = adapter.model.model.audio_tower
        lens = torch.tensor([frames])
        probe = torch.zeros(self.tower.config.num_mel_bins, frames)
        _, chunk_lengths = omni.chunk_and_pad_features(probe, lens, self.tower.n_window)
        self.chunk_lengths = [int(c) for c in chunk_lengths]
        self.register_buffer("lengths", chunk_lengths, persistent=False)
        self.register_buffer("valid", omni.get_valid_indices(chunk_lengths), persistent=False)
        self.register_buffer("pool", omni.get_pool_indices(lens), persistent=False)
        cu = omni.get_audio_cu_seqlens(chunk_lengths)
        self.register_buffer("cu_seqlens", cu, persistent=False)
        self.max_seqlen = omni.get_max_seqlen(cu, self.tower.config)
        self.chunks = list(zip(cu.tolist()[:-1], cu.tolist()[1:]))

    def forward(self, mel):
        t = self.tower
        pieces = mel.T.split(self.chunk_lengths, dim=0)
        padded = nn.utils.rnn.pad_sequence(list(pieces), batch_first=True).transpose(1, 2).to(t.conv1.weight.dtype)
        mask = (torch.arange(padded.shape[2]) < self.lengths.unsqueeze(1)).unsqueeze(1).to(padded.dtype)
        x = nn.functional.gelu(t.conv1(padded)) * mask
        x = nn.functional.gelu(t.conv2(x)).transpose(1, 2)
        x = x + t.positional_embedding.positional_embedding[: x.shape[1], :].unsqueeze(0).to(x.dtype)
        hidden = torch.index_select(x.reshape(-1, x.shape[-1]), 0, self.valid)
        for layer in t.layers[:-1]:
            hidden = layer(hidden, cu_seqlens=self.cu_seqlens, max_seqlen=self.max_seqlen)[0]
        last = t.layers[-1]
        # the last layer's q/k from its own input, as the torch adapter captures them (its attention input is
        # the layer norm of that input; the adapter's pre-hook sees the attention module's input)
        attn_in = last.self_attn_layer_norm(hidden)
        heads = last.self_attn.num_heads
        q = last.self_attn.q_proj(attn_in).reshape(attn_in.shape[0], heads, -1).transpose(0, 1)
        k = last.self_attn.k_proj(attn_in).reshape(attn_in.shape[0], heads, -1).transpose(0, 1)
        hidden = last(hidden, cu_seqlens=self.cu_seqlens, max_seqlen=self.max_seqlen)[0]
        hidden = (hidden[self.pool] + hidden[self.pool + 1]) / 2
        return t.proj(t.ln_post(hidden)).float(), q.float(), k.float()


@register_stage
class AudioStage(StageExporter):
    name = "audio"
    order = 15
    file = "audio.onnx"

    def applies(self, job: ExportJob) -> bool:
        return bool(getattr(job.adapter, "has_audio", False))

    def export(self, job):
        import numpy as np

        a = job.adapter
        wave = np.random.default_rng(0).uniform(-0.3, 0.3, int(CHUNK_S * 16000)).astype(np.float32)
        mel = a.mel(wave).to(torch.float32)
        graph = AudioGraph(a, int(mel.shape[1])).eval()
        a.features.save_pretrained(os.path.join(job.out_dir, FEATURES_DIR))
        outs = ["features", "q", "k"]
        exporter = export_onnx(job, self.name, graph, (mel,), self.file, ["mel"], outs, {})
        with torch.no_grad(), sdpa_as_4d():
            ref = graph(mel)
        check = check_graph(job, self.name, os.path.join(job.out_dir, self.file), {"mel": mel.numpy()}, list(ref), outs)
        attrs = {"chunk_s": CHUNK_S, "sample_rate": 16000, "mel_frames": int(mel.shape[1]),
                 "mel_bins": int(mel.shape[0]), "chunks": [list(c) for c in graph.chunks],
                 "seconds_per_token": 0.04, "feature_extractor": FEATURES_DIR,
                 "mel_trim": "frames cut to a multiple of 4 (one LLM token per 4 mel frames)", "check": check}
        return _stage_spec(job, self.name, self.file, exporter, attrs)
