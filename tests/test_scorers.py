import torch

from arrcoc.scorers import ParticipatoryScorer, PerspectivalScorer, PropositionalScorer, ScorerInputs, standardize


def test_standardize_is_per_sample():
    x = torch.tensor([[1.0, 2.0, 3.0], [100.0, 300.0, 200.0]])
    z = standardize(x)
    assert torch.allclose(z.mean(-1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(z.std(-1, unbiased=False), torch.ones(2), atol=1e-4)
    assert torch.allclose(z[0], standardize(x[:1])[0])


def test_flat_map_standardises_to_zeros_despite_rounding_noise():
    flat = torch.full((2, 576), -6.3561) + torch.randn(2, 576) * 1e-7
    assert torch.equal(standardize(flat), torch.zeros(2, 576))


def _inputs(b=2, n=16, d=8, e=12, t=5):
    torch.manual_seed(0)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 3:] = False
    return ScorerInputs(patches=torch.randn(b, n, d), grid=(4, 4), question=torch.randn(b, t, e),
                        question_mask=mask, cls=torch.randn(b, d))


def test_builtin_scorers_are_standardised_and_differentiable():
    inputs = _inputs()
    for cls in (PropositionalScorer, PerspectivalScorer, ParticipatoryScorer):
        scorer = cls(8, 12, rank=6)
        out = scorer(inputs)
        assert out.shape == (2, 16)
        assert torch.allclose(out.mean(-1), torch.zeros(2), atol=1e-5)
        (out * torch.randn_like(out)).sum().backward()
        assert all(p.grad is not None and torch.any(p.grad != 0) for p in scorer.parameters()), cls.__name__


def test_participatory_depends_on_question_and_ignores_padding():
    inputs = _inputs()
    scorer = ParticipatoryScorer(8, 12, rank=6)
    base = scorer(inputs)
    changed_pad = ScorerInputs(**{**inputs.__dict__, "question": inputs.question.clone()})
    changed_pad.question[1, 3:] = 99.0  # padding positions of sample 1
    assert torch.allclose(scorer(changed_pad), base, atol=1e-6)
    other_q = ScorerInputs(**{**inputs.__dict__, "question": torch.randn(2, 5, 12)})
    assert not torch.allclose(scorer(other_q), base)
    empty = ScorerInputs(**{**inputs.__dict__, "question_mask": torch.zeros(2, 5, dtype=torch.bool)})
    assert torch.equal(scorer(empty), torch.zeros(2, 16))  # nothing asked: a flat map


def test_propositional_scores_a_lone_object_highest():
    patches = torch.zeros(1, 16, 8)
    patches[0, 5] = 5.0  # one patch differs from a uniform background
    scorer = PropositionalScorer(8, 12, rank=8)
    with torch.no_grad():
        scorer.proj.weight.copy_(torch.eye(8))
        scorer.norm.weight.fill_(1.0)
        scorer.norm.bias.zero_()
    patches[0, 5] = torch.arange(8.0)  # non-constant so LayerNorm keeps it distinct
    out = scorer(ScorerInputs(patches=patches, grid=(4, 4), question=torch.zeros(1, 0, 12),
                              question_mask=torch.zeros(1, 0, dtype=torch.bool)))
    assert int(out.argmax()) == 5
