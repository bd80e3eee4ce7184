"""STC — Streaming Token Compression (spec `../shared/specs/stc.md`): STC-Cacher inside the ViT and
STC-Pruner after the projector, as pure functions plus one thin stateful method (`--method stc`)."""
from vlmedge.compression.stc.cacher import LayerRef, refresh_layer, selective_from_indices, selective_layer
from vlmedge.compression.stc.method import STC
from vlmedge.compression.spread import context_count
from vlmedge.compression.stc.pruner import (PrunerMemory, PruneResult, gaussian_similarity,
                                            keep_from_scores, prune_chunk, score_tokens, select_channels, update_memory)
from vlmedge.compression.stc.selection import (key_similarity, num_dynamic, select_dynamic_tokens,
                                               select_from_similarity)
from vlmedge.compression.stc.state import STCStreamState, refresh_due

__all__ = ["STC", "STCStreamState", "LayerRef", "PrunerMemory", "PruneResult", "refresh_due", "refresh_layer",
           "selective_layer", "selective_from_indices", "key_similarity", "num_dynamic", "select_dynamic_tokens",
           "select_from_similarity", "select_channels", "gaussian_similarity", "update_memory", "score_tokens",
           "keep_from_scores", "context_count", "prune_chunk"]
