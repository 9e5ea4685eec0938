"""The embedded tiny tokenizer (of `arrcoc-tiny-lm`): byte-level, built locally, nothing downloaded.

Every byte is a token, so any text (unicode, empty strings) round-trips exactly; a fixed list of
whole words (the sample task's vocabulary and the VQA prompt) are single tokens so sequences stay
short. The vocabulary is built from constants, never trained, so it is identical on every rank,
machine and run.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", IMAGE_TOKEN, "<|user|>", "<|assistant|>"]

_WORDS = """
a an the is are there any how many what which where who color colour shape size of in on at to
and or not no yes it this that image picture object objects thing things left right above below
top bottom middle center centre near next beside between behind front than more fewer same
red green blue yellow orange purple pink brown black white gray grey cyan magenta
circle circles square squares triangle triangles star stars diamond diamonds cross crosses
ellipse rectangle rectangles shape shapes small large big tiny
zero one two three four five six seven eight nine ten eleven twelve
0 1 2 3 4 5 6 7 8 9 10 11 12
answer question using single word phrase do does can you see show
""".split()

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A deterministic byte-level tokenizer with a chat template and an ``<image>`` token."""
    vocab: dict[str, int] = {}
    for tok in SPECIAL_TOKENS + sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(tok, len(vocab))
    for word in sorted(set(_WORDS + [w.capitalize() for w in _WORDS])):
        for piece in (word, "Ġ" + word):  # "Ġ" marks a preceding space in byte-level encoding
            vocab.setdefault(piece, len(vocab))
    # No merges: ``ignore_merges`` matches whole known words first, the rest falls back to bytes.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=[IMAGE_TOKEN, "<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
