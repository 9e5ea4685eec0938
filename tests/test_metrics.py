import pytest
import torch

from arrcoc.metrics import (
    BudgetHistogram,
    ExactMatch,
    VQAAccuracy,
    normalize_answer,
    process_digit_article,
    process_punctuation,
    vqa_soft_accuracy,
)


@pytest.mark.parametrize("raw,norm", [
    # every official step (what the prediction gets; exact match gives it to both sides)
    ("Two", "2"), ("The Dog.", "dog"), ("a red one?", "red 1"), ("a red one!", "red one!"),
    ("dont know", "don\u2019t know"), ("Yes", "yes"), ("  tennis\tracket ", "tennis racket"), ("1,000", "1000"),
    ("3.5", "3.5"), ("black-and-white", "black-and-white"), ("left, right", "left right"), ("none", "0"),
    ("It's an apple", "it s apple"), ("isnt it", "isn\u2019t it"), ("2.", "2"), ("Three.", "3"),
    ("mr. smith", "mr smith"), (".5", ".5"),
])
def test_normalisation_rules(raw, norm):
    assert normalize_answer(raw) == norm


# The official evaluation (vqaEval.py of GT-Vision-Lab/VQA, the revision issue 13 measured with): the prediction
# is cleaned and gets the punctuation step and the word step; the references get the punctuation step only, and
# only when the ten are not all the same; each reference is left out in turn and the prediction scores
# min(1, #other references equal to it / 3), averaged over the ten. Its marks: ; : / ' [ ] " ( ) = + \\ _ > < @ `
# , ? -- the colon and the apostrophe are marks, the hyphen and "!" are not.
@pytest.mark.parametrize("prediction,answers,official", [
    # the hyphen is no mark, and ten identical references are compared as written: "t shirt" != "t-shirt"
    ("t shirt", ["t-shirt"] * 10, 0.0),
    # "!" is no mark: "yes!" stays "yes!"
    ("yes!", ["yes"] * 10, 0.0),
    # the prediction's apostrophe (touching no space) becomes a space, "don t know"; the references, all
    # alike, stay "don't know"
    ("don't know", ["don't know"] * 10, 0.0),
    # the same: "o clock" against "o'clock"
    ("o'clock", ["o'clock"] * 10, 0.0),
    # the hyphen is no mark: "baseball-bat" stays, against "baseball bat"
    ("baseball-bat", ["baseball bat"] * 10, 0.0),
    # the colon is a mark: the prediction becomes "10 30", the identical references stay "10:30"
    ("10:30", ["10:30"] * 10, 0.0),
    # references differ, so they get the punctuation step too: five become "10 30", which the prediction is
    ("10 30", ["10:30"] * 5 + ["10:35"] * 5, 1.0),
])
def test_soft_accuracy_matches_the_official_evaluation(prediction, answers, official):
    assert vqa_soft_accuracy(prediction, answers) == official


def test_official_steps():
    # punctuation: a mark touching a space is deleted, elsewhere it becomes a space; with a digit-comma-digit
    # anywhere in the text every mark is deleted; a period goes unless a digit follows it
    assert process_punctuation("10:30") == "10 30"
    assert process_punctuation("don't") == "don t"
    assert process_punctuation("left, right") == "left right"
    assert process_punctuation("1,000") == "1000"
    assert process_punctuation("1,000 (approx)") == "1000 approx"
    assert process_punctuation("t-shirt!") == "t-shirt!"
    assert process_punctuation("2.5") == "2.5"
    assert process_punctuation("2.") == "2"
    assert process_punctuation("." * 40) == "." * 8  # the official call removes at most 32 periods
    # words: lower case, number words, articles, contractions (the official table, with its typographic
    # apostrophes; lower-case keys only match)
    assert process_digit_article("The TWO dogs") == "2 dogs"
    assert process_digit_article("none") == "0"
    assert process_digit_article("an apple") == "apple"
    assert process_digit_article("dont know oclock") == "don\u2019t know o\u2019clock"
    assert process_digit_article("aint") == "ain't"  # one of the table's straight apostrophes
    assert process_digit_article("im") == "im"  # the table has "Im", which lower-cased input never meets


def test_soft_accuracy_rules():
    mixed = ["2"] * 5 + ["3"] * 5
    # the prediction always gets number words, articles and case
    assert vqa_soft_accuracy("two", mixed) == 1.0
    assert vqa_soft_accuracy("Two", ["2"] * 10) == 1.0
    assert vqa_soft_accuracy("The Dog", ["dog"] * 10) == 1.0
    # the references never do: "the cat" stays "the cat"
    assert vqa_soft_accuracy("cat", ["the cat"] * 5 + ["dog"] * 5) == 0.0
    assert vqa_soft_accuracy("the cat", ["the cat"] * 10) == 0.0
    # digit-comma-digit: the comma goes from the prediction always, from the references when they differ
    assert vqa_soft_accuracy("1,000", ["1000"] * 10) == 1.0
    assert vqa_soft_accuracy("1000", ["1,000"] * 5 + ["100"] * 5) == 1.0
    assert vqa_soft_accuracy("1000", ["1,000"] * 10) == 0.0
    # a period before a digit stays: "2.5" is not "25"; a final period goes
    assert vqa_soft_accuracy("2.5", ["2.5"] * 10) == 1.0
    assert vqa_soft_accuracy("25", ["2.5"] * 10) == 0.0
    assert vqa_soft_accuracy("2.5.", ["2.5"] * 10) == 1.0
    # the prediction is cleaned of newlines, tabs and outer spaces
    assert vqa_soft_accuracy(" yes\n", ["yes"] * 10) == 1.0


def test_soft_accuracy_leave_one_out():
    # 3 of 10 match: leaving out one of the 3 leaves 2 (2/3), leaving out one of the other 7 leaves 3 (1)
    assert vqa_soft_accuracy("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx(0.9)
    assert vqa_soft_accuracy("cat", ["cat"] * 3 + ["dog"] * 7) == (3 * (2 / 3) + 7 * 1.0) / 10
    assert vqa_soft_accuracy("cat", ["cat"] * 2 + ["dog"] * 8) == pytest.approx(0.6)
    assert vqa_soft_accuracy("cat", ["cat"] + ["dog"] * 9) == pytest.approx(0.3)
    assert vqa_soft_accuracy("cat", ["cat"] * 4 + ["dog"] * 6) == 1.0


def test_soft_accuracy_hand_computed():
    assert vqa_soft_accuracy("2", ["2"] * 10) == 1.0
    # 2 annotators said "red": leaving one of them out leaves 1 match (1/3), leaving another out 2 (2/3)
    answers = ["red", "red"] + ["blue"] * 8
    expected = (2 * (1 / 3) + 8 * (2 / 3)) / 10
    assert vqa_soft_accuracy("Red", answers) == pytest.approx(expected)
    # 3 said "cat": subsets that drop one of them have 2 matches (2/3), the other 7 have 3 (1.0)
    assert vqa_soft_accuracy("the cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx((3 * 2 / 3 + 7) / 10)
    assert vqa_soft_accuracy("cat", ["dog"] * 10) == 0.0
    assert vqa_soft_accuracy("x", []) == 0.0
    # a single reference (not VQAv2; the official formula would give 0 always): equal to the processed
    # prediction or not
    assert vqa_soft_accuracy("Cat", ["cat"]) == 1.0 and vqa_soft_accuracy("dog", ["cat"]) == 0.0


def test_metrics_accumulate_and_skip_placeholders():
    acc, em = VQAAccuracy(), ExactMatch()
    preds = ["yes", "no", "Two", "junk"]
    answers = [["yes"] * 10, ["yes"] * 10, ["2"] * 6 + ["3"] * 4, ["x"] * 10]
    valid = torch.tensor([True, True, True, False])
    acc.update(preds, answers, valid)
    em.update(preds, answers, valid)
    assert float(acc.compute()) == pytest.approx(2 / 3)
    assert float(em.compute()) == pytest.approx(2 / 3)


def test_budget_histogram():
    h = BudgetHistogram(max_tokens=576, bins=4)
    h.update(torch.tensor([0, 143, 144, 575, 576, 300]), valid=torch.tensor([1, 1, 1, 1, 1, 0]))
    assert h.compute().tolist() == [2, 1, 0, 2]


def test_val_acc_is_the_official_number_and_exact_match_stays_lenient():
    # what training logs as val/acc: the official rule ("10:30" against ten "10:30" scores 0) ...
    acc, em = VQAAccuracy(), ExactMatch()
    acc.update(["10:30", "don't know"], [["10:30"] * 10, ["don't know"] * 10])
    assert float(acc.compute()) == 0.0
    # ... while exact match normalises both sides on every question
    em.update(["10:30", "don't know"], [["10:30"] * 10, ["don't know"] * 10])
    assert float(em.compute()) == 1.0
