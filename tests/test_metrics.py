import pytest
import torch

from arrcoc.metrics import BudgetHistogram, ExactMatch, VQAAccuracy, normalize_answer, vqa_soft_accuracy


@pytest.mark.parametrize("raw,norm", [
    ("Two", "2"), ("The Dog.", "dog"), ("a red one!", "red 1"), ("dont know", "don't know"),
    ("Yes", "yes"), ("  tennis\tracket ", "tennis racket"), ("1,000", "1000"), ("3.5", "3.5"),
    ("black-and-white", "black and white"), ("left, right", "left right"), ("none", "0"),
    ("It's an apple", "it's apple"), ("isnt it", "isn't it"), ("2.", "2"), ("Three.", "3"), ("mr. smith", "mr smith"),
    (".5", ".5"),
])
def test_normalisation_rules(raw, norm):
    assert normalize_answer(raw) == norm


def test_soft_accuracy_hand_computed():
    ten = ["2"] * 10
    assert vqa_soft_accuracy("two", ten) == 1.0
    # 2 annotators said "red": leaving one of them out leaves 1 match (1/3), leaving another out 2 (2/3)
    answers = ["red", "red"] + ["blue"] * 8
    expected = (2 * (1 / 3) + 8 * (2 / 3)) / 10
    assert vqa_soft_accuracy("Red", answers) == pytest.approx(expected)
    # 3 said "cat": subsets that drop one of them have 2 matches (2/3), the other 7 have 3 (1.0)
    assert vqa_soft_accuracy("the cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx((3 * 2 / 3 + 7) / 10)
    assert vqa_soft_accuracy("cat", ["dog"] * 10) == 0.0
    assert vqa_soft_accuracy("x", []) == 0.0


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
