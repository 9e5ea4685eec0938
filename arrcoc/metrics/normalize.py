"""VQAv2 answer processing, step by step as the official evaluation (``vqaEval.py`` of the VQA challenge's
evaluation tools, GT-Vision-Lab/VQA) does it, written for this project.

The steps:

* :func:`clean_answer`: newlines and tabs become spaces, then the ends are stripped.
* :func:`process_punctuation`: each of ``; : / ' [ ] " ( ) = + \\ _ > < @ ` , ?`` (not the hyphen, not
  ``!``, not braces) is deleted when it touches a space anywhere in the text, or when the text holds a
  digit-comma-digit pattern (``1,000`` -> ``1000``), and is replaced by a space otherwise (``10:30`` ->
  ``10 30``, ``don't`` -> ``don t``). Then a period is deleted unless a digit follows it (``2.5`` and
  ``.5`` stay, ``2.`` -> ``2``), at most 32 of them.
* :func:`process_digit_article`: lower case, number words to digits (``none``/``zero`` .. ``ten``),
  the articles ``a``/``an``/``the`` dropped, apostrophe-less contractions restored from the official
  table (``dont`` -> ``don’t``, with its typographic apostrophe, as that table has it).

:func:`arrcoc.metrics.vqa_soft_accuracy` applies them as the official evaluation does: the prediction gets
all of them; the reference answers get the punctuation step only, and only when they are not all the same.
The script's later revisions changed the marks (hyphen, ``!`` and braces in, colon and apostrophe out) and
when answers are processed; these are the rules of the revision this project reproduces (commit 07aecec),
the one the accuracy table of issue 13 was measured with. :func:`normalize_answer` applies every step; it is
the lenient form :class:`~arrcoc.metrics.ExactMatch` compares both sides with.
"""

from __future__ import annotations

import re

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
# The official evaluation's contraction table, entry for entry, odd entries too (capitalised keys, which never
# match after lower-casing; "somebody'd" -> "somebodyd"; "'twas"), written here with straight apostrophes and
# given the table's own typographic ones below (_TYPOGRAPHIC), so the scores agree.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
# In the official table most apostrophes are typographic (’); these entries keep the straight one: values of the
# first five keys and of "weve", "wheres", "whove"; the keys "couldn'tve" and "hadn'tve".
_STRAIGHT_VALUES = frozenset({"aint", "arent", "cant", "couldve", "couldnt", "weve", "wheres", "whove"})
_STRAIGHT_KEYS = frozenset({"couldn'tve", "hadn'tve"})
_TYPOGRAPHIC = {(k if k in _STRAIGHT_KEYS else k.replace("'", "\u2019")):
                (v if k in _STRAIGHT_VALUES else v.replace("'", "\u2019")) for k, v in _CONTRACTIONS.items()}
# The official marks (periods have their own rule): no hyphen, no "!", no braces.
_PUNCT = (";", ":", "/", "'", "[", "]", '"', "(", ")", "=", "+", "\\", "_", ">", "<", "@", "`", ",", "?")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# A period is dropped unless a digit follows ("3.5" and ".5" stay, "2." -> "2", "mr. x" -> "mr x"). The
# official pattern reads as if a digit before a period kept it too, but its look-behind is malformed
# ("(?!<=\d)" is a look-ahead for "<=" and a digit), so only the digit after counts.
_LONE_PERIOD = re.compile(r"\.(?!\d)")
# The official call passes re.UNICODE (32) where re.sub takes its count: at most 32 periods go.
_MAX_PERIODS = 32


def clean_answer(answer: str) -> str:
    """Newlines and tabs to spaces, ends stripped: what the official evaluation does to every answer first."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """The official punctuation step: ``'10:30'`` -> ``'10 30'``, ``"don't"`` -> ``'don t'``, ``'1,000'`` ->
    ``'1000'``, ``'left, right'`` -> ``'left right'``, ``'2.'`` -> ``'2'``; hyphens and ``!`` are kept."""
    out = text
    drop_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in _PUNCT:
        # Judged on the text as given, not as the earlier marks left it (as the official step does).
        if drop_all or f"{p} " in text or f" {p}" in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _LONE_PERIOD.sub("", out, count=_MAX_PERIODS)


def process_digit_article(text: str) -> str:
    """The official word step: ``'The Two dogs'`` -> ``'2 dogs'``, ``'dont know'`` -> ``'don’t know'``."""
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_TYPOGRAPHIC.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(answer: str) -> str:
    """Every official step on one answer: 'Two dogs?' -> '2 dogs'; 'The Red one.' -> 'red 1'; 'dont know'
    -> 'don’t know'. What the VQA accuracy does to a prediction, and exact match to both sides."""
    return process_digit_article(process_punctuation(clean_answer(answer)))
