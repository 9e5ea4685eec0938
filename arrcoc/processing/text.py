"""Text processing shared by the model and the data path: the tokenizer (the tiny one included),
the image placeholder, the label value the loss ignores, and the answer a sample is trained on."""

from __future__ import annotations

from collections import Counter

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from arrcoc.presets import TINY_LM
from arrcoc.processing.tiny_tokenizer import IMAGE_TOKEN, build_tiny_tokenizer

#: Label value of every token that is not an answer token (what ``cross_entropy`` ignores).
IGNORE_INDEX = -100

__all__ = ["IGNORE_INDEX", "IMAGE_TOKEN", "build_tokenizer", "majority_answer"]


def build_tokenizer(name: str = TINY_LM, trust_remote_code: bool = False,
                    revision: str | None = None) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer with a pad token and the ``<image>`` placeholder, without loading weights:
    what data workers use. Equal to ``LanguageModel(name).tokenizer``."""
    if name == TINY_LM:
        tokenizer = build_tiny_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        # Never embedded: the placeholder is replaced by visual tokens before the LLM runs,
        # so the embedding matrix does not grow.
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    return tokenizer


def majority_answer(answers: list[str]) -> str:
    """The most frequent answer, ties broken by first occurrence (VQAv2's training target)."""
    counts = Counter(answers)
    return max(answers, key=lambda a: (counts[a], -answers.index(a))) if answers else ""
