"""``arrcoc bench tokens``: accuracy per visual token, the learned allocation against every equal-token baseline.

Two passes over the evaluation split. The first reads the budget head's logits for every sample, so the head can
be moved to each target mean by one constant over the whole set (:func:`~arrcoc.bench.budgets.shift_for_mean`: a
sample's budget never depends on its batch partners). The second answers every question once per method:

* ``adaptive``: the learned ranking at the head's budgets (``head``: as trained; ``64``, ``128``, ...: shifted);
* ``fixed``: the learned ranking with the same k for every sample (k = the target mean; at ``head``, the head's
  mean budget over the split);
* at the adaptive per-sample budgets: ``random``, ``grid``, ``pool`` (average pooling to the same count, no
  summary), ``cls_attention`` (the encoder's class-token attention; open_clip ViTs with pixels only),
  ``diversity`` (greedy max-min cosine distance), ``question_blind`` (the model's own scorers and balancer with the
  question withheld), ``scorer:<name>`` (one scorer's map alone: the balancer ablated), ``swapped_selection`` (the
  tokens chosen for the next sample's question, answering the sample's own question), ``teacher`` (the relevance
  phase's target: the all-token model's gradient saliency for the reference answer, an oracle ranking);
* ``full`` (all patches), ``shuffled`` (all patches of the next sample's image), ``full_trained`` (another
  checkpoint, all patches) and, with the oracle, its per-sample answers and losses at each k.

Every selection method keeps k patches plus the model's summary token(s) of what it dropped, so its visual
tokens per sample are exactly the adaptive method's; ``pool`` makes that many pooled tokens instead. Each sample's
result is a plain record; :mod:`arrcoc.bench.report` aggregates them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from arrcoc.bench.budgets import ORACLE_KS, head_budgets, shift_for_mean, top_k_mask
from arrcoc.bench.selections import cls_attention_scores, diversity_scores, pool_tokens
from arrcoc.data import model_inputs
from arrcoc.metrics.vqa import vqa_soft_accuracy
from arrcoc.model import ARRCOCModel, baseline_scores
from arrcoc.phases.objectives import full_token_teacher
from arrcoc.processing import patch_masks

log = logging.getLogger("arrcoc.bench")

#: methods that keep the adaptive method's per-sample counts (``scorer:<name>`` are added per model)
SAME_COUNT = ("random", "grid", "pool", "cls_attention", "diversity", "question_blind", "swapped_selection",
              "teacher")
#: every method name ``BenchConfig.methods`` may choose from (``scorer``: each ``scorer:<name>``)
METHODS = ("full", "shuffled", "adaptive", "fixed", *SAME_COUNT, "scorer")


@dataclass
class BenchConfig:
    """What ``arrcoc bench tokens`` measures.

    Args:
        means: target mean budgets (kept patches) the adaptive head is moved to; ``fixed`` uses them as k.
        recall_ks: fixed k at which question use (object recall) is measured, besides the head's own budgets.
        oracle: also answer every sample at each of ``oracle_ks`` with the learned ranking.
        oracle_tolerance: the oracle's loss tolerance (nats above the all-token loss).
        limit: evaluate at most this many samples (None: the whole split).
        max_new_tokens: answer length for greedy decoding.
        methods: the method names to run (``full``, ``shuffled``, ``adaptive``, ``fixed``, the baselines,
            ``scorer``); None runs every one.
    """

    means: tuple[float, ...] = (64, 128, 198, 300)
    recall_ks: tuple[int, ...] = (64, 128)
    oracle: bool = False
    oracle_ks: tuple[int, ...] = ORACLE_KS
    oracle_tolerance: float = 0.1
    limit: int | None = None
    max_new_tokens: int = 8
    methods: tuple[str, ...] | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.methods is not None:
            unknown = sorted(set(self.methods) - set(METHODS))
            if unknown:
                raise ValueError(f"methods: unknown {unknown}; valid: {list(METHODS)}")

    def runs(self, method: str) -> bool:
        """Whether ``method`` (``scorer:<name>`` counts as ``scorer``) is measured."""
        return self.methods is None or method.partition(":")[0] in self.methods


def _valid_batches(batches: Iterable[dict[str, Any]], limit: int | None) -> Iterator[dict[str, Any]]:
    """Batches until ``limit`` valid samples have been seen (the last one may hold a few more)."""
    seen = 0
    for batch in batches:
        if limit is not None and seen >= limit:
            return
        seen += int(batch["valid"].sum())
        yield batch


class TokenBench:
    """Runs the methods on one model (and optionally a full-token reference model) batch by batch."""

    def __init__(self, model: ARRCOCModel, config: BenchConfig, full_model: ARRCOCModel | None = None) -> None:
        self.model, self.config, self.full_model = model.eval(), config, full_model
        self.lo, self.hi = model.allocator.min_tokens, model.allocator.max_tokens
        self.n = model.encoder.num_patches
        self.shifts: dict[str, float] = {}
        self.head_mean: float | None = None  # the head's mean budget over the split, as trained
        self._cls_ok = True

    # ------------------------------------------------------------------ shared per batch
    def _seen(self, batch: dict[str, Any]) -> tuple[dict[str, Any], Tensor | None]:
        """Model inputs with the encoder's features (the frozen encoder runs once per batch), and the pixels."""
        inputs = model_inputs(batch)
        pixels = inputs.get("pixel_values")
        if "patch_features" not in inputs:
            seen = self.model.encoder(pixels)
            inputs |= {"patch_features": seen.flat(), "cls_features": seen.cls}
        return inputs, pixels

    def _relevance(self, inputs: dict[str, Any], pixels: Tensor | None, question: str = "own"):
        q_ids, q_mask = inputs.get("question_ids"), inputs.get("question_mask")
        if question == "blind":
            q_ids = q_mask = None
        elif question == "swapped":  # the next sample's question on this sample's image
            q_ids, q_mask = q_ids.roll(1, 0), q_mask.roll(1, 0)
        return self.model.relevance(inputs["patch_features"], inputs.get("cls_features"), pixels, q_ids, q_mask)

    # ------------------------------------------------------------------ pass 1
    @torch.no_grad()
    def calibrate(self, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        """Read the head's logits over the split; set the shift for every target mean. Returns the shifts."""
        logits = []
        for batch in _valid_batches(batches, self.config.limit):
            inputs, pixels = self._seen(batch)
            rel = self._relevance(inputs, pixels)
            logits.append(self.model.allocator.budget_logits(rel.relevance, rel.context)[batch["valid"]])
        every = torch.cat(logits)
        self.head_mean = float(head_budgets(every, self.lo, self.hi).float().mean())
        self.shifts = {"head": 0.0} | {f"{m:g}": shift_for_mean(every, self.lo, self.hi, m) for m in self.config.means}
        return self.shifts

    # ------------------------------------------------------------------ pass 2
    @torch.no_grad()
    def run(self, batches: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """One record per valid sample: per method and target, (visual tokens, VQA accuracy); question use;
        balancer weights; the head's budget; the oracle's sweep."""
        if not self.shifts:
            raise RuntimeError("call calibrate() before run(): the target means need the head's logits")
        records: list[dict[str, Any]] = []
        for batch in _valid_batches(batches, self.config.limit):
            records += self._batch(batch)
            log.info("bench tokens: %d samples", len(records))
        return records

    def _generate(self, inputs: dict[str, Any], **kw) -> tuple[list[str], Tensor]:
        out = self.model.generate(**inputs, max_new_tokens=self.config.max_new_tokens, **kw)
        return out.texts, out.allocation.visual_tokens

    def _batch(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        model, cfg = self.model, self.config
        inputs, pixels = self._seen(batch)
        own, blind, swapped = (self._relevance(inputs, pixels, q) for q in ("own", "blind", "swapped"))
        logits = model.allocator.budget_logits(own.relevance, own.context)  # [B]
        rows: dict[str, tuple[list[str], Tensor]] = {}

        if cfg.runs("full"):
            rows["full@576"] = self._generate(inputs, full_tokens=True)
        if cfg.runs("shuffled"):
            other = {k: inputs[k].roll(1, 0) for k in ("patch_features", "cls_features") if inputs.get(k) is not None}
            rows["shuffled@576"] = self._generate(inputs | other, full_tokens=True)
        if self.full_model is not None:
            full = self.full_model.generate(**model_inputs(batch), full_tokens=True,
                                            max_new_tokens=cfg.max_new_tokens)
            rows["full_trained@576"] = (full.texts, full.allocation.visual_tokens)

        rank_scores = {"cls_attention": self._cls_scores(pixels) if cfg.runs("cls_attention") else None,
                       "diversity": diversity_scores(inputs["patch_features"]) if cfg.runs("diversity") else None,
                       "question_blind": blind.relevance, "swapped_selection": swapped.relevance,
                       "teacher": self._teacher(inputs) if cfg.runs("teacher") else None}
        rank_scores |= {f"scorer:{name}": own.maps[:, s] for s, name in enumerate(model.scorer_names)}
        rank_scores = {name: scores for name, scores in rank_scores.items() if cfg.runs(name)}
        head_k = head_budgets(logits, self.lo, self.hi)
        for target, shift in self.shifts.items():
            budgets = head_budgets(logits, self.lo, self.hi, shift)  # [B]
            rows[f"adaptive@{target}"] = self._generate(inputs, budget=budgets)  # always: the others match its counts
            summary = rows[f"adaptive@{target}"][1] - budgets  # [B] summary tokens per sample
            if cfg.runs("fixed"):
                k = round(self.head_mean if target == "head" else float(target))
                rows[f"fixed@{target}"] = self._generate(inputs, budget=min(max(k, 1), self.n))
            for name in ("random", "grid"):
                if cfg.runs(name):
                    rows[f"{name}@{target}"] = self._generate(inputs, budget=budgets, selection=name)
            for name, scores in rank_scores.items():
                if scores is not None:
                    rows[f"{name}@{target}"] = self._generate(inputs, budget=budgets, selection=scores)
            if cfg.runs("pool"):
                rows[f"pool@{target}"] = self._pooled(batch, inputs, budgets + summary)

        head_scores = {"adaptive": own.relevance, "random": None, "grid": None} | rank_scores
        recall = self._question_use(batch, own.relevance, swapped.relevance, head_k, head_scores)
        oracle = self._oracle(batch, inputs) if cfg.oracle else None
        return self._records(batch, rows, recall, oracle, own.weights, head_k)

    def _teacher(self, inputs: dict[str, Any]) -> Tensor | None:
        """The relevance phase's target: where the all-token answer loss depends on each patch (gradient saliency;
        it reads the reference answer, so it is an oracle ranking, not a deployable one). How well it keeps the
        named objects says whether this model's LLM can teach a selection to follow the question at all."""
        if inputs.get("labels") is None:
            return None
        # the batch's encoder features (``_seen``): the encoder does not run again; a batch without answer tokens
        # has no gradient and gets a uniform ranking
        return full_token_teacher(self.model, inputs, inputs["patch_features"], inputs.get("cls_features"),
                                  saliency=True).saliency

    def _cls_scores(self, pixels: Tensor | None) -> Tensor | None:
        if not self._cls_ok:
            return None
        if pixels is None:
            self._cls_ok = False
            self.config.notes.append("cls_attention: skipped, the batches carry cached features, not pixels")
            return None
        try:
            return cls_attention_scores(self.model.encoder.visual, pixels.to(self._encoder_dtype()),
                                        self.model.encoder.layer)
        except NotImplementedError as err:
            self._cls_ok = False
            self.config.notes.append(f"cls_attention: skipped, {err}")
            return None

    def _encoder_dtype(self) -> torch.dtype:
        return next(self.model.encoder.parameters()).dtype

    def _pooled(self, batch: dict[str, Any], inputs: dict[str, Any], counts: Tensor) -> tuple[list[str], Tensor]:
        """The ``pool`` baseline: each sample's features (with their grid positions) average-pooled to at most
        ``counts[b]`` tokens, projected, answered."""
        model = self.model
        features = inputs["patch_features"].to(model.positions.row.dtype) + model.positions()  # [B, N, D]
        pooled, mask = pool_tokens(features, model.encoder.grid, counts)  # [B, K, D], [B, K]
        visual = model.projector(pooled)  # [B, K, E]
        _, texts = model.answer(inputs["input_ids"], inputs["attention_mask"], visual, mask, self.config.max_new_tokens,
                                labels=inputs.get("labels"))
        return texts, mask.sum(-1)

    def _question_use(self, batch, own: Tensor, swapped: Tensor, head_k: Tensor,
                      head_scores: dict[str, Tensor | None]) -> list[dict[str, Any]] | None:
        """Per sample and k (``recall_ks`` and the head's budgets): patches of the named objects, of the other
        objects, and how many of each the selection keeps; also the named patches kept by the swapped question's
        selection; and, at the head's budgets, the named patches each selection method keeps (``methods``).
        None when the batch carries no object locations."""
        objects = batch.get("objects")
        if not objects or not any(objects):
            return None
        grid = self.model.encoder.grid
        masks = [patch_masks(objs, grid) for objs in objects]  # per sample: ([N] bool, [N] bool)
        named = torch.stack([m[0] for m in masks]).to(own.device)  # [B, N]
        other = torch.stack([m[1] for m in masks]).to(own.device)
        out: list[dict[str, Any]] = [{"objects": len(objs), "methods": {}} for objs in objects]
        b, n = own.shape
        for name, scores in head_scores.items():
            if name in ("random", "grid"):
                scores = baseline_scores(name, (b, n), head_k, own.device)
            if scores is not None:
                keep = top_k_mask(scores, head_k)
                for i in range(b):
                    out[i]["methods"][name] = [int((keep[i] & named[i]).sum()), int((keep[i] & other[i]).sum())]
        for label, k in [*((str(k), k) for k in self.config.recall_ks), ("adaptive", head_k)]:
            keep, keep_swapped = top_k_mask(own, k), top_k_mask(swapped, k)  # [B, N]
            for i in range(len(objects)):
                out[i][label] = [int(named[i].sum()), int((keep[i] & named[i]).sum()), int(other[i].sum()),
                                 int((keep[i] & other[i]).sum()), int((keep_swapped[i] & named[i]).sum())]
        return out

    def _oracle(self, batch: dict[str, Any], inputs: dict[str, Any]) -> list[dict[str, list]]:
        """Answers and answer losses at every oracle k with the learned ranking."""
        ks = [k for k in self.config.oracle_ks if k <= self.n]
        per_sample: list[dict[str, list]] = [{"ks": ks, "answers": [], "losses": []} for _ in batch["answers"]]
        for k in ks:
            texts, _ = self._generate(inputs, budget=k)
            out = self.model(**inputs, budget=k, return_logits=False)
            losses = out.sample_loss()
            for i, rec in enumerate(per_sample):
                rec["answers"].append(texts[i])
                rec["losses"].append(float(losses[i]))
        return per_sample

    def _records(self, batch, rows, recall, oracle, weights: Tensor, head_k: Tensor) -> list[dict[str, Any]]:
        types = batch.get("question_type") or [""] * len(batch["answers"])
        out = []
        for i, answers in enumerate(batch["answers"]):
            if not bool(batch["valid"][i]) or not answers:
                continue
            rec = {"question_id": batch["question_id"][i], "type": types[i] or "all", "head_budget": int(head_k[i]),
                   "weights": [float(w) for w in weights[i]],
                   "methods": {key: [int(tokens[i]), vqa_soft_accuracy(texts[i], answers)]
                               for key, (texts, tokens) in rows.items()}}
            if recall is not None:
                rec["recall"] = recall[i]
            if oracle is not None:
                rec["oracle"] = oracle[i] | {"acc": [vqa_soft_accuracy(a, answers) for a in oracle[i]["answers"]]}
            out.append(rec)
        return out
