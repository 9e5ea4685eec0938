"""``arrcoc bench speed``: what fewer visual tokens buy in time, per variant, against what they could buy.

One synthetic batch (random pixels, random prompt ids with one ``<image>`` placeholder, labels on the last few
tokens) goes through the model as four variants: ``full`` (all 576 patches), ``fixed@198``, ``fixed@64`` and
``adaptive@198`` (per-sample budgets with a stated spread at mean 198; with a checkpoint: ``adaptive@head``, the
head's own budgets). Each variant runs from pixels and from precomputed encoder features, and is timed as a
training step (forward + backward, no optimizer), a prefill (a forward without labels), the time to the first
generated token and the decode rate over 16 tokens. The LLM alone on random embeddings at each variant's token
count gives its ideal speed-up over ``full``; every repeat runs every cell once, in a rotating order, so drift
(a shared machine, clocks, caches) hits all alike, and medians over the repeats after warm-up are reported.

The training step is also split by stage (encoder, allocation = scorers + balancer + allocator + summary,
projector + packing, LLM) with forward hooks on the model's parts; the backward pass is split where the gradient
reaches the projector's output (the LLM's and the packing's backward done) and its input (approximate: autograd
does not run stage by stage).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from arrcoc.model import ARRCOCModel
from arrcoc.processing.files import write_text

log = logging.getLogger("arrcoc.bench")

SHAPES = ("tiny", "1.5b", "7b")
#: real-scale decoders (random weights, the public models' shapes): Qwen2-1.5B and Llama-2-7B
BIG_LLMS: dict[str, tuple[str, dict[str, Any]]] = {
    "1.5b": ("qwen2", dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                           num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)),
    "7b": ("llama", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False)),
}
BIG_ENCODER = "EVA02-L-14-336"  # 24x24 = 576 patches of width 1024
SOURCES = ("pixels", "features")
STAGES = ("encoder", "allocation", "projector_packing", "llm")
IDEAL_INNER = 3  # runs of the LLM alone per cell and repeat


@dataclass
class SpeedConfig:
    """What one run measures (see the module docstring)."""

    batch_size: int = 8
    repeats: int = 10
    warmup: int = 2
    text_tokens: int = 64  # prompt + answer per sample, the ``<image>`` placeholder included
    answer_tokens: int = 4  # labelled tokens at the end of each prompt
    question_tokens: int = 16  # what the scorers read (a slice of the prompt)
    new_tokens: int = 16  # generated for the decode rate
    adaptive_mean: int = 198
    head_budgets: bool = False  # adaptive = the budget head's own budgets (a trained checkpoint)
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("batch_size", 1), ("repeats", 1), ("warmup", 0), ("answer_tokens", 1),
                          ("question_tokens", 1), ("new_tokens", 2)):
            if getattr(self, name) < low:
                raise ValueError(f"{name}={getattr(self, name)} must be >= {low}")
        if self.text_tokens < self.answer_tokens + self.question_tokens + 2:
            raise ValueError(f"text_tokens={self.text_tokens} must hold bos, <image>, the question "
                             f"({self.question_tokens}) and the answer ({self.answer_tokens})")


@dataclass(frozen=True)
class Variant:
    """One way of feeding the LLM: all patches, or a budget (an int, per-sample ints, or None = the head's)."""

    name: str
    full: bool = False
    budget: int | tuple[int, ...] | None = None

    @functools.cache  # noqa: B019 - a handful of variants: the budget tensor is made once, outside the timed calls
    def kwargs(self, device: torch.device) -> dict[str, Any]:
        if self.full:
            return {"full_tokens": True}
        budget = self.budget
        if isinstance(budget, tuple):
            budget = torch.tensor(budget, dtype=torch.long, device=device)  # [B]
        return {"full_tokens": False, "budget": budget}


# ---------------------------------------------------------------------------------------------- budgets
def adaptive_spread(mean: float = 198.0, low: int = 64, high: int = 400, sd: float = 110.0, n: int = 4096,
                    seed: int = 0) -> Tensor:
    """A stated synthetic spread of per-sample budgets [n]: normal(mean, sd) draws with a fixed seed, clipped to
    [low, high] and shifted back to the mean (a few rounds, as clipping moves it). What a trained head's budgets
    might look like: wide (p10-p90 well over 100 tokens), skewed by the floor at ``low``."""
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randn(n, generator=gen, dtype=torch.float64) * sd + mean  # [n]
    for _ in range(20):
        draws = (draws + (mean - draws.clamp(low, high).mean())).clamp(low, high)
    return draws


def spread_stats(budgets: Tensor) -> dict[str, float]:
    """Mean, sd and p10/p50/p90 of budgets [n]."""
    q = torch.quantile(budgets.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    return {"mean": float(budgets.double().mean()), "sd": float(budgets.double().std()), "p10": float(q[0]),
            "p50": float(q[1]), "p90": float(q[2]), "min": float(budgets.min()), "max": float(budgets.max())}


def batch_budgets(spread: Tensor, b: int, mean: int, low: int = 64, high: int = 400) -> tuple[int, ...]:
    """``b`` budgets that stand for the spread [n]: its quantiles at (i + 0.5) / b, moved (one shift for all) so
    the batch's mean is ``mean`` to within a token: a batch with the same mean count as ``fixed@mean``, whose
    only difference is that its budgets differ (and the batch is padded to the largest)."""
    ks = torch.quantile(spread.double(), (torch.arange(b, dtype=torch.float64) + 0.5) / b)  # [b]
    for _ in range(20):  # clipping moves the mean: shift again
        ks = (ks + (mean - ks.mean())).clamp(low, high)
    return tuple(int(k) for k in ks.round().long())


def variants(model: ARRCOCModel, config: SpeedConfig, adaptive: tuple[int, ...] | None) -> list[Variant]:
    """full, fixed@198, fixed@64 and adaptive (``adaptive`` budgets, or the head's when None)."""
    n = model.encoder.num_patches
    out = [Variant("full", full=True)]
    for k in (config.adaptive_mean, 64):
        if k > n:
            raise ValueError(f"fixed@{k} needs {k} patches; encoder {model.encoder.name!r} has {n}")
        out.append(Variant(f"fixed@{k}", budget=k))
    if adaptive is None:
        out.append(Variant("adaptive@head", budget=None))
    else:
        out.append(Variant(f"adaptive@{config.adaptive_mean}", budget=adaptive))
    return out


# ---------------------------------------------------------------------------------------------- model and inputs
def check_device(shapes: str, device: str) -> None:
    """Refuse what cannot run: an unknown shape or device, CUDA without a GPU, the real-scale shapes on a CPU."""
    if shapes not in SHAPES:
        raise ValueError(f"--shapes {shapes!r} is unknown; valid: {', '.join(SHAPES)}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r} is unknown; valid: cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False); "
                         "valid here: --device cpu")
    if shapes != "tiny" and device != "cuda":
        raise ValueError(f"--shapes {shapes} runs on --device cuda only (its random weights alone are 6-28 GB in "
                         "fp32 on a CPU); valid with --device cpu: --shapes tiny")


def build_model(shapes: str, device: torch.device) -> ARRCOCModel:
    """``tiny``: the default ARRCOCModel (embedded presets, offline). ``1.5b``/``7b``: EVA02-L-14-336 and a
    Qwen2-1.5B- or Llama-2-7B-shaped decoder, random weights, bf16 (CUDA only; see :func:`check_device`)."""
    if shapes == "tiny":
        return ARRCOCModel().to(device)
    from transformers import AutoConfig, AutoModelForCausalLM

    from arrcoc.encoder import VisionEncoder
    from arrcoc.language_model import LanguageModel

    encoder = VisionEncoder(BIG_ENCODER, pretrained=None)
    # LanguageModel only loads by name, and a real-scale name would download weights: build the tiny preset
    # (its tokenizer and <image> id stay: timing does not read text) and swap in a randomly initialised
    # decoder of the real shape, with hidden_size set to match so the projector and scorers are built for it.
    llm = LanguageModel()
    model_type, shape = BIG_LLMS[shapes]
    tok = llm.tokenizer
    hf_config = AutoConfig.for_model(model_type, **shape, max_position_embeddings=4096,
                                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                     eos_token_id=tok.eos_token_id)
    with torch.device(device):
        llm.model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16, attn_implementation="sdpa")
    llm.hidden_size = int(hf_config.hidden_size)
    model = ARRCOCModel(encoder=encoder, llm=llm).to(device)
    model.encoder.to(torch.bfloat16)  # frozen: its forward casts pixels to its own dtype
    return model


def synthetic_batch(model: ARRCOCModel, config: SpeedConfig, device: torch.device) -> dict[str, Tensor]:
    """Random pixels at the encoder's input size and random ordinary token ids: ``[bos, <image>, ...]`` with the
    question a slice of the prompt and labels on the last ``answer_tokens`` ids."""
    tok = model.tokenizer
    gen = torch.Generator().manual_seed(config.seed)
    b, t = config.batch_size, config.text_tokens
    special = set(tok.all_special_ids) | {model.llm.image_token_id}
    ordinary = torch.tensor([i for i in range(len(tok)) if i not in special])
    ids = ordinary[torch.randint(len(ordinary), (b, t), generator=gen)]  # [B, T]
    if tok.bos_token_id is not None:
        ids[:, 0] = tok.bos_token_id
    ids[:, 1] = model.llm.image_token_id
    labels = torch.full_like(ids, -100)
    labels[:, -config.answer_tokens:] = ids[:, -config.answer_tokens:]
    question = ids[:, 2:2 + config.question_tokens]  # [B, Tq]
    pixels = torch.randn(b, 3, *model.encoder.image_size, generator=gen)  # [B, 3, S, S]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "question_ids": question,
             "question_mask": torch.ones_like(question, dtype=torch.bool), "pixel_values": pixels}
    return {k: v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------- timing
class Clock:
    """Timestamps: CUDA events on a GPU (kernels run asynchronously: host time would measure their launch),
    ``time.perf_counter`` on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start: Any, end: Any) -> float:
        if self.cuda:
            end.synchronize()
            return float(start.elapsed_time(end))
        return (end - start) * 1e3

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


class StageProbe:
    """Hooks that timestamp the stage boundaries of one model call: the encoder's end, the allocator's end, the
    summary's span (allocation work done among the projector's), the decoder's (first) start; with ``backward``,
    the moments the gradient reaches the projector's (first) output (the LLM's and the packing's backward done)
    and its input (the projector's done)."""

    def __init__(self, model: ARRCOCModel, clock: Clock, backward: bool) -> None:
        self.model, self.clock, self.backward = model, clock, backward
        self.marks: dict[str, Any] = {}
        self.summary_spans: list[list[Any]] = []
        self.handles: list[Any] = []

    def _mark(self, name: str) -> None:
        self.marks.setdefault(name, self.clock.mark())  # first occurrence only

    def _grad_mark(self, tensor: Any, name: str) -> None:
        if self.backward and isinstance(tensor, Tensor) and tensor.requires_grad:
            tensor.register_hook(lambda _grad: self._mark(name))

    def __enter__(self) -> StageProbe:
        m, h = self.model, self.handles
        h.append(m.encoder.register_forward_hook(lambda *_: self._mark("encoder_end")))
        h.append(m.allocator.register_forward_hook(lambda *_: self._mark("allocation_end")))
        if m.summary is not None:
            h.append(m.summary.register_forward_pre_hook(lambda *_: self.summary_spans.append([self.clock.mark()])))
            h.append(m.summary.register_forward_hook(lambda *_: self.summary_spans[-1].append(self.clock.mark())))

        def projector_pre(_module, args):
            if "projector_start" not in self.marks:
                self._mark("projector_start")
                self._grad_mark(args[0] if args else None, "projector_input_grad")

        def projector_post(_module, _args, output):
            # The gradient reaches the (first) projector output once the LLM's backward and the packing's are
            # done, however many decoder calls the LLM made (length groups): the end of the LLM's share.
            if "projector_end" not in self.marks:
                self._mark("projector_end")
                self._grad_mark(output, "llm_backward_end")

        h.append(m.llm.model.get_decoder().register_forward_pre_hook(lambda *_: self._mark("llm_start")))
        h.append(m.projector.register_forward_pre_hook(projector_pre))
        h.append(m.projector.register_forward_hook(projector_post))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def stages(self, start: Any, forward_end: Any, backward_end: Any = None) -> dict[str, float]:
        """Milliseconds per stage; the forward's stages partition ``start..forward_end`` exactly (packing and
        glue count with the projector, the loss with the LLM), the backward's ``forward_end..backward_end`` (the
        packing's backward, index copies, counts with the LLM's)."""
        ms, m = self.clock.ms, self.marks
        b1 = m.get("encoder_end", start)
        b2 = m.get("allocation_end", b1)
        b3 = m["llm_start"]
        summary = sum(ms(a, b) for a, b in self.summary_spans)
        out = {"encoder": ms(start, b1), "allocation": ms(b1, b2) + summary,
               "projector_packing": ms(b2, b3) - summary, "llm": ms(b3, forward_end)}
        if backward_end is not None:
            g_llm = m.get("llm_backward_end")
            if g_llm is None:  # nothing upstream of the LLM trains: its backward is all of it
                out["llm"] += ms(forward_end, backward_end)
                return out
            out["llm"] += ms(forward_end, g_llm)
            g_proj = m.get("projector_input_grad")
            if g_proj is None or "allocation_end" not in m:
                out["projector_packing"] += ms(g_llm, backward_end)
            else:
                out["projector_packing"] += ms(g_llm, g_proj)
                out["allocation"] += ms(g_proj, backward_end)
        return out


# ---------------------------------------------------------------------------------------------- the benchmark
class SpeedBench:
    """Times every (variant, source) cell and the LLM alone at each variant's token count, interleaved."""

    def __init__(self, model: ARRCOCModel, config: SpeedConfig, device: torch.device) -> None:
        self.model, self.config, self.device = model, config, device
        self.clock = Clock(device)
        # Timing wants one deterministic step: no exploration noise, no jittered budgets.
        model.allocator.selection_noise = 0.0
        model.allocator.budget_jitter = 0.0
        self.batch = synthetic_batch(model, config, device)
        self.spread = adaptive_spread(config.adaptive_mean, model.allocator.min_tokens, model.allocator.max_tokens,
                                      seed=config.seed)
        self.adaptive = None if config.head_budgets else batch_budgets(
            self.spread, config.batch_size, config.adaptive_mean, model.allocator.min_tokens,
            model.allocator.max_tokens)
        self.variants = variants(model, config, self.adaptive)
        with torch.no_grad(), self.autocast():
            enc = model.encoder(self.batch["pixel_values"])
        self.features = {"patch_features": enc.flat(), "cls_features": enc.cls}  # [B, N, D], [B, D]
        self.text = config.text_tokens - 1  # real text tokens per sample (the placeholder is replaced)
        self.visual = {v.name: self._visual_tokens(v) for v in self.variants}  # name -> (mean, padded length)

    # ------------------------------------------------------------------ inputs
    def autocast(self):
        """bf16 autocast on CUDA (how training runs there), nothing on the CPU; a fresh context per use."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()

    def _inputs(self, source: str, labels: bool = True) -> dict[str, Tensor]:
        keep = ("input_ids", "attention_mask", "question_ids", "question_mask") + (("labels",) if labels else ())
        inputs = {k: self.batch[k] for k in keep}
        if source == "pixels":
            return inputs | {"pixel_values": self.batch["pixel_values"]}
        return inputs | self.features

    def _visual_tokens(self, variant: Variant) -> tuple[float, int]:
        """Mean visual tokens per sample (kept + summary) and the padded sequence length the LLM sees."""
        self.model.eval()
        with torch.no_grad(), self.autocast():
            out = self.model(**self._inputs("features"), **variant.kwargs(self.device), return_logits=False)
        return float(out.allocation.visual_tokens.float().mean()), int(out.packed.embeds.shape[1])

    def ideal_length(self, name: str) -> int:
        """Tokens per sample for the LLM alone: the text plus the variant's mean visual tokens, no padding."""
        return self.text + round(self.visual[name][0])

    # ------------------------------------------------------------------ one cell
    def _train(self, variant: Variant, source: str) -> tuple[float, dict[str, float]]:
        model, clock = self.model, self.clock
        model.train()
        model.zero_grad(set_to_none=True)
        clock.sync()
        with StageProbe(model, clock, backward=True) as probe:
            start = clock.mark()
            with self.autocast():
                out = model(**self._inputs(source), **variant.kwargs(self.device), return_logits=False)
            forward_end = clock.mark()
            out.loss.backward()
            end = clock.mark()
            stages = probe.stages(start, forward_end, end)
        total = clock.ms(start, end)
        model.zero_grad(set_to_none=True)
        return total, stages

    @torch.no_grad()
    def _prefill(self, variant: Variant, source: str) -> tuple[float, dict[str, float]]:
        model, clock = self.model, self.clock
        model.eval()
        clock.sync()
        with StageProbe(model, clock, backward=False) as probe:
            start = clock.mark()
            with self.autocast():
                model(**self._inputs(source, labels=False), **variant.kwargs(self.device), return_logits=False)
            end = clock.mark()
            stages = probe.stages(start, end)
        return clock.ms(start, end), stages

    @torch.no_grad()
    def _generate(self, variant: Variant, source: str) -> dict[str, Any]:
        """One ``generate`` call, timed at each decoder call (a forward pre-hook): the first token is ready when
        the second decoder call starts (time to first token, encoder and allocation included), each later token
        when the next one starts. ``generate`` stops early once every sample has emitted its end-of-sequence
        token: the rate counts the tokens actually generated."""
        model, clock = self.model, self.clock
        model.eval()
        starts: list[Any] = []
        handle = model.llm.model.get_decoder().register_forward_pre_hook(lambda *_: starts.append(clock.mark()))
        try:
            clock.sync()
            start = clock.mark()
            with self.autocast():
                out = model.generate(**self._inputs(source), **variant.kwargs(self.device),
                                     max_new_tokens=self.config.new_tokens)
            end = clock.mark()
        finally:
            handle.remove()
        tokens = int(out.tokens.shape[1])  # [B, T]: T <= new_tokens
        first = starts[1] if len(starts) > 1 else end
        last = starts[tokens] if len(starts) > tokens else end  # token T is ready when decoder call T + 1 starts
        return {"ttft_ms": clock.ms(start, first), "decode_ms": clock.ms(first, last), "decode_tokens": tokens - 1}

    def cell(self, variant: Variant, source: str) -> dict[str, Any]:
        train, train_stages = self._train(variant, source)
        prefill, prefill_stages = self._prefill(variant, source)
        return {"train_ms": train, "train_stages": train_stages, "prefill_ms": prefill,
                "prefill_stages": prefill_stages, **self._generate(variant, source)}

    def ideal(self, length: int) -> dict[str, Any]:
        """The LLM alone on random embeddings [B, length, E]: a training step (forward + backward of a stand-in
        loss) and a prefill, each the median of ``IDEAL_INNER`` runs (it is cheap, and every ideal ratio rests on
        two of these cells)."""
        runs = [self._ideal_once(length) for _ in range(IDEAL_INNER)]
        return {k: statistics.median(r[k] for r in runs) for k in ("train_ms", "prefill_ms")}

    def _ideal_once(self, length: int) -> dict[str, float]:
        model, clock, llm = self.model, self.clock, self.model.llm
        b = self.config.batch_size
        embeds = torch.randn(b, length, llm.hidden_size, device=self.device, dtype=llm.dtype)  # [B, L, E]
        mask = torch.ones(b, length, dtype=torch.long, device=self.device)
        positions = torch.arange(length, device=self.device).expand(b, length)
        model.train()
        embeds.requires_grad_(True)
        clock.sync()
        start = clock.mark()
        with self.autocast():
            hidden = llm.hidden_states(embeds, mask, positions)  # [B, L, E]
            loss = hidden.float().pow(2).mean()
        loss.backward()
        end = clock.mark()
        train = clock.ms(start, end)
        model.zero_grad(set_to_none=True)
        model.eval()
        embeds = embeds.detach()
        clock.sync()
        with torch.no_grad():
            start = clock.mark()
            with self.autocast():
                llm.hidden_states(embeds, mask, positions)
            end = clock.mark()
        return {"train_ms": train, "prefill_ms": clock.ms(start, end)}

    # ------------------------------------------------------------------ the run
    def cells(self) -> list[tuple[tuple[str, ...], Callable[[], dict[str, Any]]]]:
        cells: list[tuple[tuple[str, ...], Callable[[], dict[str, Any]]]] = [
            ((v.name, s), lambda v=v, s=s: self.cell(v, s)) for v in self.variants for s in SOURCES]
        lengths = sorted({self.ideal_length(v.name) for v in self.variants})
        cells += [(("ideal", str(n)), lambda n=n: self.ideal(n)) for n in lengths]
        return cells

    def run(self) -> dict[tuple[str, ...], list[dict[str, Any]]]:
        """Every cell once per repeat, the order rotating by one each repeat; warm-up repeats are dropped."""
        cells = self.cells()
        results: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        total = self.config.warmup + self.config.repeats
        for r in range(total):
            t0 = time.perf_counter()
            shift = r % len(cells)
            for key, fn in cells[shift:] + cells[:shift]:
                measured = fn()
                if r >= self.config.warmup:
                    results[key].append(measured)
            label = "warm-up" if r < self.config.warmup else "repeat"
            log.info("speed: %s %d/%d, %d cells in %.1f s", label, r + 1, total, len(cells),
                     time.perf_counter() - t0)
        return results

    # ------------------------------------------------------------------ summary
    def summarize(self, results: dict[tuple[str, ...], list[dict[str, Any]]]) -> dict[str, Any]:
        """Medians per cell, stage breakdowns, ratios against ``full`` and against the ideal."""
        med = statistics.median
        ideal = {n: {k: med(r[k] for r in results[("ideal", n)]) for k in ("train_ms", "prefill_ms")}
                 for (kind, n) in results if kind == "ideal"}
        full_len = str(self.ideal_length("full"))
        out: dict[str, Any] = {}
        for v in self.variants:
            mean, padded = self.visual[v.name]
            length = str(self.ideal_length(v.name))
            ratio = {k: ideal[full_len][f"{k}_ms"] / ideal[length][f"{k}_ms"] for k in ("train", "prefill")}
            entry: dict[str, Any] = {"visual_tokens_mean": mean, "padded_length": padded,
                                     "llm_tokens_ideal": int(length), "ideal_ms": ideal[length],
                                     "ideal_ratio": ratio}
            for s in SOURCES:
                rows = results[(v.name, s)]
                m = {k: med(r[k] for r in rows) for k in ("train_ms", "prefill_ms", "ttft_ms")}
                rates = [self.config.batch_size * r["decode_tokens"] / (r["decode_ms"] / 1e3)
                         for r in rows if r["decode_tokens"] > 0 and r["decode_ms"] > 0]
                rate = med(rates) if rates else None
                steps = med(r["decode_tokens"] for r in rows) + 1
                breakdown = {st: med(r["train_stages"][st] for r in rows) for st in STAGES}
                prefill_breakdown = {st: med(r["prefill_stages"][st] for r in rows) for st in STAGES}
                entry[s] = {**m, "decode_steps": steps, "decode_tok_s": rate, "breakdown_ms": breakdown,
                            "allocation_share": breakdown["allocation"] / m["train_ms"],
                            "prefill_breakdown_ms": prefill_breakdown,
                            "prefill_allocation_share": prefill_breakdown["allocation"] / m["prefill_ms"]}
            out[v.name] = entry
        for v in self.variants:
            for s in SOURCES:
                cell, base = out[v.name][s], out["full"][s]
                speedup = {k: base[f"{k}_ms"] / cell[f"{k}_ms"] for k in ("train", "prefill", "ttft")}
                if cell["decode_tok_s"] and base["decode_tok_s"]:
                    speedup["decode"] = cell["decode_tok_s"] / base["decode_tok_s"]
                cell["speedup_vs_full"] = speedup
                cell["share_of_ideal"] = {k: speedup[k] / out[v.name]["ideal_ratio"][k] for k in ("train", "prefill")}
        return out


def machine(device: torch.device) -> dict[str, Any]:
    """The device's name and the library versions the numbers depend on."""
    import open_clip
    import transformers

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    info: dict[str, Any] = {"device": device.type, "cpu": name, "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = name
    info["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                        "open_clip": open_clip.__version__, "python": platform.python_version()}
    return info


def _packing(model: ARRCOCModel, device: torch.device) -> str | None:
    """How the LLM runs a padded batch (``pad``, ``group``, ``varlen``) where the model has that choice."""
    resolve = getattr(model.llm, "resolved_packing", None)
    return resolve(device) if callable(resolve) else None


def run_speed(model: ARRCOCModel, config: SpeedConfig, device: torch.device, command: str, shapes: str,
              notes: list[str] | None = None) -> dict[str, Any]:
    """Build the bench, run it, and return the summary ``speed.json`` holds."""
    t0 = time.perf_counter()
    bench = SpeedBench(model, config, device)
    results = bench.run()
    spread = spread_stats(bench.spread)
    adaptive = {"source": "head" if config.head_budgets else "synthetic",
                "batch_budgets": list(bench.adaptive) if bench.adaptive is not None else None,
                "spread": None if config.head_budgets else spread}
    if not config.head_budgets:
        adaptive["law"] = (f"normal(mean {config.adaptive_mean}, sd 110) draws (seed {config.seed}), clipped to "
                           f"[{model.allocator.min_tokens}, {model.allocator.max_tokens}] and shifted back to the "
                           f"mean; the batch takes the spread's quantiles at (i + 0.5) / B, moved to mean "
                           f"{config.adaptive_mean}")
    params = {name: sum(p.numel() for p in part.parameters()) for name, part in model.components().items()}
    return {
        "command": command, "machine": machine(device), "shapes": shapes,
        "encoder": model.encoder.name, "llm_hidden_size": model.llm.hidden_size, "parameters": params,
        "llm_packing": _packing(model, device),
        "batch_size": config.batch_size, "repeats": config.repeats, "warmup": config.warmup,
        "text_tokens": config.text_tokens, "answer_tokens": config.answer_tokens, "new_tokens": config.new_tokens,
        "num_patches": model.encoder.num_patches, "adaptive": adaptive,
        "variants": bench.summarize(results),
        "notes": [
            "medians over repeats after warm-up; every repeat runs every cell once in a rotating order",
            "train = forward + backward (no optimizer step); prefill = forward without labels; ttft and decode from "
            "one generate call timed at each decoder call: ttft = until the first token (encoder and allocation "
            "included), decode tok/s = batch x later tokens / their time (fewer than 15 if every sample ended)",
            "stage breakdown: forward by hooks; backward split where the gradient reaches the projector's output "
            "(LLM + packing done) and its input (approximate); allocation = scorers + balancer + allocator + "
            "summary",
            f"ideal ratio = the LLM alone (median of {IDEAL_INNER} runs per repeat) on random embeddings at all "
            f"{model.encoder.num_patches} patches + text tokens vs at the variant's mean visual + text tokens (no "
            "padding); share of ideal = speed-up over full / ideal ratio",
            *(notes or []),
        ],
        "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------------------------- files
def _num(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(summary: dict[str, Any]) -> str:
    """``speed.md``: the command, the machine, one table per source and the training step's stage breakdown."""
    mach = summary["machine"]
    v = mach["versions"]
    lines = [
        "# arrcoc bench speed", "",
        f"`{summary['command']}`", "",
        f"Machine: {mach['name']} ({mach['device']}, {mach['cpu_count']} CPU cores, torch threads: "
        f"{mach['torch_threads']}); torch {v['torch']}, transformers {v['transformers']}, open_clip {v['open_clip']}.",
        f"Shapes `{summary['shapes']}` (encoder {summary['encoder']}, {summary['num_patches']} patches; LLM width "
        f"{summary['llm_hidden_size']}, packing {summary.get('llm_packing') or 'pad'}); batch "
        f"{summary['batch_size']}, {summary['text_tokens']} text tokens, median of {summary['repeats']} repeats "
        f"after {summary['warmup']} warm-up.",
    ]
    ad = summary["adaptive"]
    if ad["spread"] is not None:
        sp = ad["spread"]
        lines += ["", f"Adaptive budgets: {ad['law']}: mean {sp['mean']:.1f}, p10 {sp['p10']:.0f}, p50 "
                      f"{sp['p50']:.0f}, p90 {sp['p90']:.0f}; this batch: {ad['batch_budgets']}."]
    else:
        lines += ["", "Adaptive budgets: the checkpoint's budget head."]
    for source in SOURCES:
        lines += ["", f"## From {source}", "",
                  "| variant | visual tokens | train ms | x full | ideal x | of ideal | prefill ms | x full | ideal x "
                  "| of ideal | TTFT ms | decode tok/s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, e in summary["variants"].items():
            c = e[source]
            sp, sh, ir = c["speedup_vs_full"], c["share_of_ideal"], e["ideal_ratio"]
            lines.append(
                f"| {name} | {e['visual_tokens_mean']:.0f} (pad {e['padded_length']}) | {_num(c['train_ms'])} | "
                f"{sp['train']:.2f} | {ir['train']:.2f} | {sh['train']:.0%} | {_num(c['prefill_ms'])} | "
                f"{sp['prefill']:.2f} | {ir['prefill']:.2f} | {sh['prefill']:.0%} | {_num(c['ttft_ms'])} | "
                f"{_num(c['decode_tok_s'], 0)} |")
    lines += ["", "## Training step by stage (ms)", "",
              "| variant | source | encoder | allocation | projector + packing | LLM | allocation share |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for name, e in summary["variants"].items():
        for source in SOURCES:
            b = e[source]["breakdown_ms"]
            lines.append(f"| {name} | {source} | {_num(b['encoder'], 2)} | {_num(b['allocation'], 2)} | "
                         f"{_num(b['projector_packing'], 2)} | {_num(b['llm'], 2)} | "
                         f"{e[source]['allocation_share']:.1%} |")
    lines += ["", "Notes:", *[f"- {n}" for n in summary["notes"]], ""]
    return "\n".join(lines)


def write(summary: dict[str, Any], out: Path) -> None:
    """``out/speed.json`` and ``out/speed.md``."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "speed.json", json.dumps(summary, indent=1, allow_nan=False) + "\n")
    write_text(out / "speed.md", markdown(summary))


__all__ = ["SHAPES", "SpeedBench", "SpeedConfig", "Variant", "adaptive_spread", "batch_budgets", "build_model",
           "check_device", "markdown", "run_speed", "spread_stats", "write"]
