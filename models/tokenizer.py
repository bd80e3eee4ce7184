"""Word-level tokenizers for the tiny test models and the bundled reference models.

Real checkpoints bring their own tokenizer; the small models here are trained from scratch on a closed
vocabulary, where one word = one token keeps every answer a single decoding step. The special tokens are the
ones the real families' chat templates and placeholders use, so the same prompt formats work for both.
"""
from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = (
    "<unk>", "<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<image>", "<video>",  # LLaVA-OneVision placeholders
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",  # Qwen2.5-VL / Omni
    "<|audio_bos|>", "<|audio_eos|>", "<|AUDIO|>",  # Qwen2.5-Omni
)

# Enough words for templated prompts and the demo; reference models add their world's vocabulary.
BASE_WORDS = (
    "system user assistant you are a camera assistant . , ? : what is the how many where which when did "
    "appeared enter entered before after now there yes no color colour of object objects shape in on at "
    "top bottom left right center middle red green blue yellow purple orange white black gray square "
    "circle triangle small large big sound tone chirp beep noise none one two three four five six seven "
    "eight nine zero frame see visible describe scene"
).split()


def build_word_tokenizer(words: Iterable[str] = BASE_WORDS) -> PreTrainedTokenizerFast:
    """A whitespace-split word-level tokenizer; unknown words map to `<unk>`."""
    vocab: dict[str, int] = {}
    for tok in list(SPECIAL_TOKENS) + list(words):
        vocab.setdefault(tok, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<unk>", "<pad>", "<|im_end|>")],
    )
    return tok
