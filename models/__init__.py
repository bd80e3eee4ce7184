"""Model adapters: one stage interface over every supported Hugging Face architecture."""
from vlmedge.models.base import Adapter, AudioTokens, FrameTokens, PromptFormat
from vlmedge.models.loading import FAMILIES, adapter_class, from_pretrained, tiny

__all__ = ["Adapter", "AudioTokens", "FrameTokens", "PromptFormat", "FAMILIES", "adapter_class", "from_pretrained", "tiny"]
