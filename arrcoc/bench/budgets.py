"""Budgets for ``arrcoc bench tokens``: the budget head moved to a target mean, top-k masks, and the oracle's
smallest sufficient k per sample.

Shapes: B samples, N patches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

#: the k the oracle tries (those up to the encoder's patch count are used)
ORACLE_KS = (16, 32, 64, 96, 128, 198, 256, 400, 576)


def head_budgets(logits: Tensor, lo: int, hi: int, shift: float = 0.0) -> Tensor:
    """The budget head's hard budgets [B] long from its logits [B], every logit shifted by ``shift``:
    ``round(lo + sigmoid(logit + shift) * (hi - lo))`` (what the allocator does with ``shift = 0``)."""
    return (lo + torch.sigmoid(logits.float() + shift) * (hi - lo)).round().long().clamp(lo, hi)


def shift_for_mean(logits: Tensor, lo: int, hi: int, mean: float, iters: int = 80) -> float:
    """The one constant that moves the head's budgets over *all* of ``logits`` [S] (the whole evaluation set,
    so no sample's budget depends on its batch partners) to the smallest mean >= ``mean``; each sample keeps
    its rank. A mean outside ``[lo, hi]`` gives every sample the nearest bound."""
    a, b = -60.0, 60.0
    if mean <= lo:
        return a
    if mean >= hi:
        return b
    for _ in range(iters):  # the mean budget only grows with the shift
        mid = (a + b) / 2
        if float(head_budgets(logits, lo, hi, mid).float().mean()) < mean:
            a = mid
        else:
            b = mid
    return b


def top_k_mask(scores: Tensor, budgets: Tensor | int) -> Tensor:
    """[B, N] bool, True on each row's ``budgets[b]`` highest scores; ties go to the lower raster index, as the
    allocator breaks them."""
    b, n = scores.shape
    order = scores.float().sort(dim=-1, descending=True, stable=True).indices  # [B, N]
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))
    k = torch.as_tensor(budgets, device=scores.device).long().expand(b)
    return ranks < k[:, None]


def smallest_sufficient_k(answers: Sequence[str], losses: Sequence[float], ks: Sequence[int],
                          tolerance: float) -> int:
    """One sample's oracle budget: the smallest ``k`` whose answer equals the answer with the largest ``k`` (all
    tokens) and whose answer loss is within ``tolerance`` (nats) of that loss. ``answers``/``losses`` follow
    ``ks`` (ascending); the largest k is always sufficient."""
    if list(ks) != sorted(ks):
        raise ValueError(f"ks={list(ks)} must be ascending")
    ref_answer, ref_loss = answers[-1], losses[-1]
    for k, answer, loss in zip(ks, answers, losses, strict=True):
        close = math.isnan(ref_loss) or (not math.isnan(loss) and loss <= ref_loss + tolerance)
        if answer == ref_answer and close:
            return k
    return ks[-1]


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks on ties); None when either side is constant or too short."""
    if len(x) < 3 or len(x) != len(y):
        return None

    def ranks(v: Sequence[float]) -> Tensor:
        t = torch.tensor(v, dtype=torch.float64)
        order = t.argsort(stable=True)
        r = torch.empty_like(t)
        r[order] = torch.arange(len(t), dtype=torch.float64)
        for value in t.unique():  # average ranks of ties
            same = t == value
            r[same] = r[same].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if float(rx.std()) == 0 or float(ry.std()) == 0:
        return None
    return float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])
