"""OmniZip — audio-guided audio-video token compression (spec `../shared/specs/omnizip.md`, core version), as
pure functions per stage plus the streaming window form and the registered methods:

- `saliency.py`  stage A: audio-encoder attention received, pooled to LLM audio tokens;
- `audio.py`     stage B: dominant audio, contextual anchors, merging;
- `ratios.py`    stage C: audio retention → video pruning ratio, released single-pass budget, `exact_budget`;
- `istc.py`      stage D: DPC-KNN (cosine) on even frames, temporal pruning on odd frames;
- `clip.py`      the clip-level function (`omnizip_clip`) over a clip of windows;
- `stream.py`    the streaming form: each window as the newest of a sliding clip, per-stream state;
- `method.py`    `--method omnizip`, `omnizip_random`, `omnizip_videoonly` (window methods of the session).
"""
from vlmedge.compression.omnizip.audio import AudioSelection, merge_anchors, num_contextual, num_dominant, select_audio
from vlmedge.compression.omnizip.clip import ClipPlan, ClipResult, omnizip_clip, plan_clip
from vlmedge.compression.omnizip.istc import (dpc_knn_keep, dpc_knn_scores, istc, istc_counts, istc_mask, num_keep,
                                              temporal_keep)
from vlmedge.compression.omnizip.method import OmniZip, OmniZipRandom, OmniZipVideoOnly
from vlmedge.compression.omnizip.ratios import (RHO_MAX, RHO_MIN, WindowRatios, base_ratio, core_normalize,
                                                exact_normalize, guided_ratios)
from vlmedge.compression.omnizip.saliency import audio_saliency, clip_saliency, pool_pairs
from vlmedge.compression.omnizip.stream import (AudioPiece, OmniZipStreamState, WindowRecord, WindowResult,
                                                record_window, sliding_plan, stream_window)

__all__ = ["OmniZip", "OmniZipRandom", "OmniZipVideoOnly", "OmniZipStreamState", "AudioPiece", "WindowRecord",
           "WindowResult", "AudioSelection", "ClipPlan", "ClipResult", "WindowRatios", "RHO_MIN", "RHO_MAX",
           "audio_saliency", "clip_saliency", "pool_pairs", "select_audio", "merge_anchors", "num_dominant",
           "num_contextual", "base_ratio", "core_normalize", "exact_normalize", "guided_ratios", "dpc_knn_scores",
           "dpc_knn_keep", "temporal_keep", "istc", "istc_counts", "istc_mask", "num_keep", "plan_clip",
           "omnizip_clip", "sliding_plan", "stream_window", "record_window"]
