"""ARRCOCModel: encoder -> scorers -> balancer -> allocator -> projector -> LLM, in one module.

Per image and question the model decides how many visual tokens the LLM gets (a budget in
``[min_tokens, max_tokens]``) and which ones (top-k of a balanced relevance map); the dropped patches
are summarised into context tokens. ``full_tokens=True`` turns allocation off: all patches in raster
order, the same model used for alignment (phase 1) and as the baseline of every comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arrcoc.allocator import Selection, TokenAllocator
from arrcoc.balancer import OpponentBalancer
from arrcoc.encoder import VisionEncoder
from arrcoc.language_model import LanguageModel
from arrcoc.packing import IGNORE_INDEX, PackedInputs, pack_multimodal
from arrcoc.positions import GridPositionEmbedding
from arrcoc.presets import TINY_ENCODER, TINY_LM
from arrcoc.projector import ProjectorSpec, build_projector
from arrcoc.scorers import SCORERS, ScorerInputs, ScorerSpec, build_scorer, masked_mean
from arrcoc.summary import DroppedTokenSummary

DEFAULT_SCORERS = ("propositional", "perspectival", "participatory")


@dataclass
class AllocationRecord:
    """One sample's allocation: what the LLM saw of its image, and why."""

    budget: int  # k, patches kept
    kept_indices: Tensor  # [k] raster indices into the H' x W' grid, ascending
    summary_tokens: int  # context tokens summarising the dropped patches
    scorer_maps: dict[str, Tensor] = field(default_factory=dict)  # name -> [N] standardised scores
    weights: dict[str, float] = field(default_factory=dict)  # name -> balancer weight

    @property
    def visual_tokens(self) -> int:
        return self.budget + self.summary_tokens


@dataclass
class BatchAllocation:
    """The batch's allocation; :meth:`records` splits it per sample."""

    budget: Tensor  # [B] long
    budget_soft: Tensor  # [B] float
    keep_mask: Tensor  # [B, N] bool
    summary_valid: Tensor  # [B, R] bool (R = 0 without summaries)
    grid: tuple[int, int]
    scorer_names: list[str]
    scorer_maps: Tensor | None = None  # [B, S, N], None in full-token mode
    weights: Tensor | None = None  # [B, S]
    relevance: Tensor | None = None  # [B, N]

    @property
    def visual_tokens(self) -> Tensor:
        """[B] visual tokens the LLM saw per sample (kept + summary)."""
        return self.budget + self.summary_valid.sum(-1)

    def records(self) -> list[AllocationRecord]:
        out = []
        for i in range(self.budget.shape[0]):
            maps, weights = {}, {}
            if self.scorer_maps is not None:
                maps = {n: self.scorer_maps[i, s].detach().cpu() for s, n in enumerate(self.scorer_names)}
                weights = {n: float(self.weights[i, s].detach()) for s, n in enumerate(self.scorer_names)}
            out.append(AllocationRecord(
                budget=int(self.budget[i]),
                kept_indices=self.keep_mask[i].nonzero().flatten().cpu(),
                summary_tokens=int(self.summary_valid[i].sum()),
                scorer_maps=maps, weights=weights,
            ))
        return out


@dataclass
class Relevance:
    """What the scorers and the balancer make of one batch (before any budget is chosen)."""

    maps: Tensor  # [B, S, N] each scorer's standardised map
    weights: Tensor  # [B, S] the balancer's per-sample weights
    relevance: Tensor  # [B, N] the balanced map the allocator ranks by
    context: Tensor  # [B, E + D] question gist + image gist (what the balancer and the budget head read)


@dataclass
class ARRCOCOutput:
    loss: Tensor | None  # [] lm_loss + budget_loss_weight * budget_loss (None without labels)
    lm_loss: Tensor | None  # [] mean cross-entropy over answer tokens
    budget_loss: Tensor  # [] batch-mean budget constraint (0 in full-token mode)
    logits: Tensor | None  # [B, L, V] over the packed sequence, if requested
    answer_logits: Tensor | None  # [M, V] logits that predict the M answer tokens
    answer_targets: Tensor | None  # [M] the answer tokens they predict
    packed: PackedInputs
    allocation: BatchAllocation
    # What the encoder gave (or the features passed in): another pass over the same images, such as
    # phase 2's full-token teacher, passes them as ``patch_features``/``cls_features`` instead of pixels.
    patch_features: Tensor | None = None  # [B, N, D]
    cls_features: Tensor | None = None  # [B, D] (None for towers without a class token)

    def sample_loss(self) -> Tensor:
        """Mean answer-token cross-entropy per sample [B] (NaN where a sample has no answer): the batch's
        ``lm_loss`` split by sample, for sufficiency labels and the oracle."""
        labels = self.packed.labels
        if labels is None or self.answer_logits is None:
            raise ValueError("sample_loss needs a forward pass with labels")
        supervised = labels[:, 1:] != IGNORE_INDEX  # [B, L-1], the positions forward took logits at
        rows = supervised.nonzero()[:, 0]  # [M] sample of each supervised token
        ce = F.cross_entropy(self.answer_logits.float(), self.answer_targets, reduction="none")  # [M]
        total = ce.new_zeros(labels.shape[0]).index_add_(0, rows, ce)  # [B]
        count = ce.new_zeros(labels.shape[0]).index_add_(0, rows, torch.ones_like(ce))  # [B]
        return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


@dataclass
class GenerationOutput:
    tokens: Tensor  # [B, T_new] generated ids (padding after the end-of-sequence token)
    texts: list[str]  # decoded answers
    allocation: BatchAllocation


class ARRCOCModel(nn.Module):
    """The ARR-COC vision-language model.

    Args:
        encoder: an open_clip model name or a built :class:`VisionEncoder` (frozen by default).
        llm: a transformers causal LM name/path or a built :class:`LanguageModel`.
        scorers: relevance scorers: built-in names (``propositional``, ``perspectival``,
            ``participatory``), :class:`RelevanceScorer` subclasses or factories
            ``(vision_dim, text_dim) -> RelevanceScorer`` (YAML: ``class_path`` + ``init_args``).
        min_tokens, max_tokens: per-sample budget bounds (default 64..400 of 576).
        target_tokens: target of the batch-mean budget (default 198).
        budget_loss_weight: weight of the batch-mean budget constraint in ``loss``.
        gate_temperature: softness of the differentiable selection gate.
        selection_noise: Gumbel exploration noise on the top-k in training (0 = off).
        budget_jitter: in training, the share of batches whose budget is one k drawn uniformly from
            ``[min_tokens, max_tokens]`` instead of the head's, so the projector and LLM learn to answer at
            every k (Matryoshka-style); 0 = off.
        summary_grid: dropped patches are pooled into ``summary_grid**2`` context tokens; 0 = off.
        projector: ``mlp2x_gelu`` (LLaVA-1.5), ``linear``, or a factory ``(in_dim, out_dim)``.
        full_tokens: allocation off: every patch, in raster order, no scorers run.
    """

    def __init__(
        self,
        encoder: str | VisionEncoder = TINY_ENCODER,
        llm: str | LanguageModel = TINY_LM,
        scorers: Sequence[ScorerSpec] = DEFAULT_SCORERS,
        min_tokens: int = 64,
        max_tokens: int = 400,
        target_tokens: float = 198.0,
        budget_loss_weight: float = 10.0,
        gate_temperature: float = 0.5,
        selection_noise: float = 0.0,
        budget_jitter: float = 0.0,
        summary_grid: int = 1,
        projector: ProjectorSpec = "mlp2x_gelu",
        full_tokens: bool = False,
    ) -> None:
        super().__init__()
        # Cheap checks first, before any weights are built.
        if min_tokens < 1:
            raise ValueError(f"min_tokens={min_tokens} must be >= 1")
        if min_tokens > max_tokens:
            raise ValueError(f"min_tokens={min_tokens} > max_tokens={max_tokens}; need min_tokens <= max_tokens")
        if gate_temperature <= 0:
            raise ValueError(f"gate_temperature={gate_temperature} must be > 0")
        if selection_noise < 0:
            raise ValueError(f"selection_noise={selection_noise} must be >= 0")
        if not 0 <= budget_jitter <= 1:
            raise ValueError(f"budget_jitter={budget_jitter} must be a share in [0, 1]")
        if summary_grid < 0:
            raise ValueError(f"summary_grid={summary_grid} must be >= 0 (0 disables summary tokens)")
        if len(scorers) == 0:
            raise ValueError("scorers is empty; give at least one, e.g. " + str(list(DEFAULT_SCORERS)))
        for spec in scorers:
            if isinstance(spec, str) and spec not in SCORERS:
                raise ValueError(f"scorers: unknown scorer name {spec!r}; valid names: {sorted(SCORERS)}, "
                                 "or a RelevanceScorer subclass given by class_path")

        self.encoder = VisionEncoder(encoder) if isinstance(encoder, str) else encoder
        self.llm = LanguageModel(llm) if isinstance(llm, str) else llm
        d, e, n = self.encoder.width, self.llm.hidden_size, self.encoder.num_patches
        if max_tokens > n:
            raise ValueError(f"max_tokens={max_tokens} exceeds the {n} patches of encoder "
                             f"{self.encoder.name!r} ({self.encoder.grid[0]}x{self.encoder.grid[1]}); valid: "
                             f"{min_tokens}..{n}")

        built = [build_scorer(s, d, e) for s in scorers]
        self.scorer_names = _unique_names([s if isinstance(s, str) else type(m).__name__
                                           for s, m in zip(scorers, built, strict=True)])
        self.scorers = nn.ModuleList(built)
        context_dim = e + d  # question gist + image gist
        self.balancer = OpponentBalancer(len(built), context_dim)
        self.allocator = TokenAllocator(n, context_dim, min_tokens=min_tokens, max_tokens=max_tokens,
                                        target_tokens=target_tokens, temperature=gate_temperature,
                                        selection_noise=selection_noise, budget_jitter=budget_jitter)
        self.summary = DroppedTokenSummary(self.encoder.grid, d, summary_grid) if summary_grid else None
        self.positions = GridPositionEmbedding(self.encoder.grid, d)
        self.projector = build_projector(projector, d, e)
        self.budget_loss_weight = budget_loss_weight
        self.full_tokens = full_tokens

    # ------------------------------------------------------------------ structure
    @property
    def built(self) -> bool:
        """False while the LLM waits for :meth:`build` (``llm.deferred``: built in the phase's ``configure_model``)."""
        return self.llm.built

    def build(self) -> ARRCOCModel:
        """Build what construction deferred (the LLM's weights, see ``LanguageModel(deferred=True)``); a built
        model is returned as it is."""
        self.llm.build()
        return self

    def components(self) -> dict[str, nn.Module]:
        """Named parts, in data-flow order: what freezing, per-component learning rates and the
        trainable-parameter table address."""
        parts = {"encoder": self.encoder, "scorers": self.scorers, "balancer": self.balancer,
                 "allocator": self.allocator, "summary": self.summary, "positions": self.positions,
                 "projector": self.projector, "llm": self.llm}
        return {k: v for k, v in parts.items() if v is not None}

    def allocation_parameters(self) -> list[nn.Parameter]:
        """Parameters that only exist to allocate tokens (trained in the relevance phase)."""
        mods = [self.scorers, self.balancer, self.allocator] + ([self.summary] if self.summary else [])
        return [p for m in mods for p in m.parameters()]

    @property
    def tokenizer(self):
        return self.llm.tokenizer

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        pixel_values: Tensor | None = None,
        labels: Tensor | None = None,
        question_ids: Tensor | None = None,
        question_mask: Tensor | None = None,
        patch_features: Tensor | None = None,
        cls_features: Tensor | None = None,
        budget: int | Tensor | None = None,
        full_tokens: bool | None = None,
        return_logits: bool = True,
        selection: str | Tensor = "learned",
    ) -> ARRCOCOutput:
        """Run the whole model on a batch.

        Args:
            input_ids, attention_mask: [B, T] prompt (+ answer) with one ``<image>`` token each.
            pixel_values: [B, 3, S, S] from ``encoder.transform``; or give ``patch_features``
                [B, N, D] (and ``cls_features`` [B, D]) precomputed by the frozen encoder.
            labels: [B, T] answer token ids, -100 elsewhere.
            question_ids, question_mask: [B, Tq] the question alone (what the scorers read).
            budget: an int or [B] tensor that overrides the budget head (equal-token baselines).
            full_tokens: override the module's ``full_tokens`` for this call.
            return_logits: also return [B, L, V] logits (memory-heavy for big vocabularies).
            selection: ``learned`` (the relevance map), or a baseline at the same budgets:
                ``random`` (seeded, deterministic) or ``grid`` (evenly spaced in raster order), or
                rank scores [B, N] of your own (the top ``budget`` of each row are kept).
        """
        full = self.full_tokens if full_tokens is None else full_tokens
        patches, cls = self._vision(pixel_values, patch_features, cls_features)  # [B, N, D], [B, D]
        visual, visual_mask, sel, allocation = self._see(pixel_values, patches, cls, question_ids, question_mask,
                                                         budget, full, selection)
        text = self.llm.embed(input_ids)  # [B, T, E]
        packed = pack_multimodal(text, input_ids, attention_mask, visual, visual_mask,
                                 self.llm.image_token_id, labels=labels)
        # Padding is not computed where llm.packing allows (grouped / varlen); [B, L, E] either way.
        hidden = self.llm.packed_hidden_states(packed.embeds, packed.attention_mask, packed.position_ids)  # [B, L, E]

        lm_loss = answer_logits = answer_targets = None
        if packed.labels is not None:
            targets = packed.labels[:, 1:]  # token t+1 is predicted at position t
            supervised = targets != IGNORE_INDEX  # [B, L-1]
            answer_logits = self.llm.logits(hidden[:, :-1][supervised]).float()  # [M, V]
            answer_targets = targets[supervised]  # [M]
            if answer_targets.numel() > 0:
                lm_loss = F.cross_entropy(answer_logits, answer_targets)
            else:  # nothing to predict: a zero that keeps the graph connected
                lm_loss = hidden.sum() * 0.0
        logits = self.llm.logits(hidden) if return_logits else None

        loss = None
        if lm_loss is not None:
            loss = lm_loss if full else lm_loss + self.budget_loss_weight * sel.budget_loss
        return ARRCOCOutput(loss=loss, lm_loss=lm_loss, budget_loss=sel.budget_loss, logits=logits,
                            answer_logits=answer_logits, answer_targets=answer_targets, packed=packed,
                            allocation=allocation, patch_features=patches, cls_features=cls)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        pixel_values: Tensor | None = None,
        labels: Tensor | None = None,
        question_ids: Tensor | None = None,
        question_mask: Tensor | None = None,
        patch_features: Tensor | None = None,
        cls_features: Tensor | None = None,
        budget: int | Tensor | None = None,
        full_tokens: bool | None = None,
        max_new_tokens: int = 8,
        selection: str | Tensor = "learned",
    ) -> GenerationOutput:
        """Greedy decoding with the allocated visual tokens (hard, deterministic selection).

        Takes a batch as ``forward`` does; where ``labels`` mark an answer, it is cut off and the
        model answers from the prompt alone. Returns the generated ids, the decoded answers and the
        allocation.
        """
        full = self.full_tokens if full_tokens is None else full_tokens
        patches, cls = self._vision(pixel_values, patch_features, cls_features)  # [B, N, D], [B, D]
        visual, visual_mask, _, allocation = self._see(pixel_values, patches, cls, question_ids, question_mask,
                                                       budget, full, selection)
        tokens, texts = self.answer(input_ids, attention_mask, visual, visual_mask, max_new_tokens, labels=labels)
        return GenerationOutput(tokens=tokens, texts=texts, allocation=allocation)

    @torch.no_grad()
    def answer(self, input_ids: Tensor, attention_mask: Tensor, visual: Tensor, visual_mask: Tensor,
               max_new_tokens: int = 8, labels: Tensor | None = None) -> tuple[Tensor, list[str]]:
        """Greedy answers from prompts [B, T] and projected visual tokens ``visual`` [B, K, E] with
        ``visual_mask`` [B, K] -> (ids [B, T_new], texts). Where ``labels`` [B, T] mark an answer, it is cut
        off: the model answers from the prompt alone.

        What :meth:`generate` does after choosing the tokens; call it directly with visual tokens made
        another way (an equal-token baseline that pools instead of selecting)."""
        if labels is not None:  # keep the prompt: real tokens before the first supervised one
            before_answer = (labels != IGNORE_INDEX).long().cumsum(-1) == 0
            attention_mask = attention_mask * before_answer.long()
        packed = pack_multimodal(self.llm.embed(input_ids), input_ids, attention_mask, visual, visual_mask,
                                 self.llm.image_token_id, padding_side="left")
        tokens = self.llm.greedy(packed.embeds, packed.attention_mask, packed.position_ids, max_new_tokens)
        texts = self.llm.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        return tokens, [t.strip() for t in texts]

    # ------------------------------------------------------------------ stages
    def _see(self, pixels, patches, cls, question_ids, question_mask, budget, full: bool, selection: str = "learned"):
        """Encoder features -> (allocation) -> projected visual tokens: shared by forward and generate."""
        b, n, _ = patches.shape
        if full:
            sel = self._keep_all(b, n, patches.device)
            maps = weights = relevance = None
        else:
            maps, weights, relevance, sel = self._allocate(patches, cls, pixels, question_ids, question_mask, budget,
                                                           selection)
        visual, visual_mask, summary_valid = self._visual_tokens(patches, sel, relevance, full)
        allocation = BatchAllocation(
            budget=sel.budget, budget_soft=sel.budget_soft, keep_mask=sel.keep_mask,
            summary_valid=summary_valid, grid=self.encoder.grid, scorer_names=list(self.scorer_names),
            scorer_maps=maps, weights=weights, relevance=relevance,
        )
        return visual, visual_mask, sel, allocation

    def _vision(self, pixels, patch_features, cls_features) -> tuple[Tensor, Tensor | None]:
        if patch_features is not None:
            n, d = self.encoder.num_patches, self.encoder.width
            if patch_features.shape[1:] != (n, d):
                raise ValueError(f"patch_features has shape {tuple(patch_features.shape)}; "
                                 f"expected [B, {n}, {d}] for encoder {self.encoder.name!r}")
            return patch_features, cls_features
        if pixels is None:
            raise ValueError("forward needs pixel_values [B, 3, S, S] or patch_features [B, N, D]")
        out = self.encoder(pixels)
        return out.flat(), out.cls  # [B, N, D], [B, D] | None

    def relevance(self, patches: Tensor, cls: Tensor | None = None, pixels: Tensor | None = None,
                  question_ids: Tensor | None = None, question_mask: Tensor | None = None) -> Relevance:
        """Encoder features [B, N, D] (+ class token [B, D], pixels) and the question [B, Tq] -> every
        scorer's map, the balancer's weights and the balanced map. ``question_ids=None`` withholds the
        question (the question-blind ablation)."""
        b = patches.shape[0]
        if question_ids is None:
            question_ids = torch.zeros(b, 0, dtype=torch.long, device=patches.device)
            question_mask = torch.zeros(b, 0, dtype=torch.bool, device=patches.device)
        elif question_mask is None:
            question_mask = torch.ones_like(question_ids, dtype=torch.bool)
        # Scorers adapt to the LLM's embedding space; they do not reshape it.
        question = self.llm.embed(question_ids).detach().float()  # [B, Tq, E]
        qmask = question_mask.bool()
        inputs = ScorerInputs(patches=patches.float(), grid=self.encoder.grid, question=question,
                              question_mask=qmask, cls=None if cls is None else cls.float(), pixels=pixels)
        maps = torch.stack([scorer(inputs) for scorer in self.scorers], dim=1)  # [B, S, N]
        context = torch.cat([masked_mean(question, qmask), patches.float().mean(1)], dim=-1)  # [B, E + D]
        relevance, weights = self.balancer(maps, context)  # [B, N], [B, S]
        return Relevance(maps=maps, weights=weights, relevance=relevance, context=context)

    def _allocate(self, patches, cls, pixels, question_ids, question_mask, budget, selection="learned"):
        rel = self.relevance(patches, cls, pixels, question_ids, question_mask)
        if isinstance(selection, Tensor):
            if selection.shape != rel.relevance.shape:
                raise ValueError(f"selection scores have shape {tuple(selection.shape)}; expected "
                                 f"{tuple(rel.relevance.shape)} ([B, N], one score per patch)")
            scores = selection.to(rel.relevance.device)
        else:
            scores = None if selection == "learned" else baseline_scores(selection, rel.relevance.shape, budget,
                                                                         rel.relevance.device)
        sel = self.allocator(rel.relevance, rel.context, budget=budget, rank_scores=scores)
        return rel.maps, rel.weights, rel.relevance, sel

    def _keep_all(self, b: int, n: int, device) -> Selection:
        keep = torch.ones(b, n, dtype=torch.bool, device=device)
        k = torch.full((b,), n, dtype=torch.long, device=device)
        return Selection(budget=k, budget_soft=k.float(), keep_mask=keep, gate=keep.float(),
                         budget_loss=torch.zeros((), device=device))

    def _visual_tokens(self, patches, sel: Selection, relevance, full: bool):
        """Kept patches (raster order, with 2-D positions, gated) + summary tokens, projected.

        -> visual [B, K_max + R, E], visual_mask [B, K_max + R], summary_valid [B, R]."""
        b, n, _ = patches.shape
        dtype = self.positions.row.dtype
        features = patches.to(dtype) + self.positions()  # [B, N, D]
        # Kept indices first, each group in raster order (stable sort of the boolean mask).
        order = sel.keep_mask.to(torch.uint8).sort(dim=-1, descending=True, stable=True).indices  # [B, N]
        k_max = int(sel.budget.max())
        idx = order[:, :k_max]  # [B, K]
        kept = features.gather(1, idx.unsqueeze(-1).expand(-1, -1, features.shape[-1]))  # [B, K, D]
        gate = sel.gate.gather(1, idx)  # [B, K]
        tokens = self.projector(kept) * gate.unsqueeze(-1).to(kept.dtype)  # [B, K, E]
        mask = torch.arange(k_max, device=patches.device)[None] < sel.budget[:, None]  # [B, K]

        if self.summary is None or full:
            return tokens, mask, torch.zeros(b, 0, dtype=torch.bool, device=patches.device)
        summ, valid = self.summary(features, relevance, sel.keep_mask)  # [B, R, D], [B, R]
        summ = summ.to(dtype)
        summ = self.projector(summ)  # [B, R, E]
        return torch.cat([tokens, summ], 1), torch.cat([mask, valid], 1), valid


SELECTIONS = ("learned", "random", "grid")


def baseline_scores(selection: str, shape: tuple[int, int], budget, device) -> Tensor:
    """Ranking scores [B, N] of an equal-token baseline: ``random`` (seeded) or ``grid`` (the k
    patches evenly spaced in raster order, k from ``budget``)."""
    b, n = shape
    if selection == "random":
        gen = torch.Generator().manual_seed(0)
        return torch.rand(b, n, generator=gen).to(device)
    if selection == "grid":
        if budget is None:
            raise ValueError("selection='grid' needs a budget (an int or [B] tensor)")
        ks = torch.as_tensor(budget).expand(b).tolist()
        scores = torch.zeros(b, n, device=device)
        for i, k in enumerate(ks):
            scores[i, torch.linspace(0, n - 1, int(k)).round().long()] = 1.0
        return scores
    raise ValueError(f"selection={selection!r}; valid: {SELECTIONS}")


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out
