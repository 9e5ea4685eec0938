"""VQAv2 answer normalisation: the rules of the official evaluation (case, punctuation, articles,
number words, contractions), written for this project."""

from __future__ import annotations

import re

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# Apostrophe-less spellings people type, mapped to the contracted form the evaluation expects.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Id": "I'd", "id": "i'd", "Im": "I'm", "im": "i'm", "Ive": "I've", "ive": "i've", "isnt": "isn't",
    "itd": "it'd", "itll": "it'll", "lets": "let's", "mightve": "might've", "mustve": "must've",
    "mustnt": "mustn't", "shant": "shan't", "shes": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "thats": "that's", "thered": "there'd", "theres": "there's", "theyd": "they'd", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "wasnt": "wasn't", "wed": "we'd", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've",
    "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "yall": "y'all",
    "youd": "you'd", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
          "!"]
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
# A period is dropped unless a digit follows ("3.5" stays, "2." -> "2", "mr. x" -> "mr x"): what the
# official evaluation does (its pattern reads as if a digit before a period kept it too, but does not).
_LONE_PERIOD = re.compile(r"\.(?!\d)")


def _punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        # Punctuation next to a space (or a comma inside a number) is dropped, elsewhere it splits words.
        if f"{p} " in text or f" {p}" in text or _COMMA_IN_NUMBER.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _LONE_PERIOD.sub("", out)


def _words(text: str) -> str:
    kept = []
    for word in text.lower().split():
        word = _NUMBERS.get(word, word)
        if word not in _ARTICLES:
            kept.append(_CONTRACTIONS.get(word, word))
    return " ".join(kept)


def normalize_answer(answer: str) -> str:
    """'Two dogs!' -> '2 dogs'; 'The Red one.' -> 'red 1'; 'dont know' -> "don't know"."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _words(_punctuation(text))
