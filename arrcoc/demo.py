"""``arrcoc demo``: phase 1 -> 2 -> 3 on the embedded default, then the comparison that matters.

Each phase runs from its YAML in ``configs/`` (tiny preset, the sample task generated on first use),
hands its weights to the next through ``init_from``, and the final model is compared on the sample
task's validation split: all 576 tokens, its own adaptive budgets, random and grid selections at the
same per-sample budgets, the majority answer, and all tokens of another sample's image (what the
model answers from the question alone: the gap to "all tokens" is how much it uses the image); plus
the measured step-time ratio of full-token vs adaptive training steps in the same run. The table is
also written to ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import torch

from arrcoc.data import model_inputs
from arrcoc.data.shards import shard_samples
from arrcoc.metrics import VQAAccuracy
from arrcoc.processing import majority_answer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LOW = 64  # the allocator's minimum budget (about 11% of the 576 tokens)
SELECTIONS = ("learned", "random", "grid")


def _phase_args(phase: int, steps: int, out: Path, args, init_from: Path | None) -> list[str]:
    argv = ["--config", str(CONFIGS / f"phase{phase}.yaml"), "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", str(steps), "--trainer.default_root_dir", str(out / f"phase{phase}"),
            "--trainer.limit_val_batches", "0",  # the comparison at the end evaluates every variant
            "--data.sample_task.train", str(args.train), "--data.sample_task.val", str(args.val),
            "--data.samples_per_epoch", str(max(args.train, 16))]
    if args.cache_dir:
        argv += ["--data.cache_dir", args.cache_dir]
    if init_from is not None:
        argv += ["--model.init_args.init_from", str(init_from)]
    return argv


def majority_baseline(train_urls: list[str]) -> str:
    """The most frequent training answer (json only: images are not decoded)."""
    counts: Counter[str] = Counter()
    for url in train_urls:
        for raw in shard_samples(url, lambda skip: None):  # the training run counts skips; this only peeks
            if "json" in raw.files:
                counts[majority_answer(json.loads(raw.files["json"])["answers"])] += 1
    return counts.most_common(1)[0][0]


def step_time(model, batch: dict, full: bool, repeats: int = 5) -> float:
    model.train()
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        model(**batch, full_tokens=full, return_logits=False).loss.backward()
        times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    return statistics.median(times[1:])  # the first call warms up


def evaluate(model, datamodule) -> dict:
    """Accuracy of the variants on the validation split (overall and per question type), and
    visual-token statistics."""
    model.eval()
    names = ("full", "shuffled", "adaptive", "random", "grid", "majority", *(f"{sel}@{LOW}" for sel in SELECTIONS))
    acc = {n: VQAAccuracy() for n in names}
    by_type: dict[str, dict[str, VQAAccuracy]] = {}
    majority = majority_baseline(datamodule.sources["train"][0].urls)
    tokens: list[int] = []
    low_tokens: list[int] = []
    for batch in datamodule.val_dataloader():
        inputs, valid, answers = model_inputs(batch), batch["valid"], batch["answers"]
        with torch.no_grad():
            if "patch_features" not in inputs:  # the frozen encoder runs once; all seven variants reuse it
                seen = model.encoder(inputs["pixel_values"])
                inputs |= {"patch_features": seen.flat(), "cls_features": seen.cls}
            adaptive = model.generate(**inputs)
            budget = adaptive.allocation.budget
            outs = {"full": model.generate(**inputs, full_tokens=True), "adaptive": adaptive,
                    "random": model.generate(**inputs, budget=budget, selection="random"),
                    "grid": model.generate(**inputs, budget=budget, selection="grid")}
            # the same three selections at a small fixed budget, where which tokens are kept matters most
            outs |= {f"{sel}@{LOW}": model.generate(**inputs, budget=LOW, selection=sel) for sel in SELECTIONS}
            # the image-use control: each question with the next sample's image, all tokens (a batch
            # needs two samples or more: the demo's validation batches hold 50)
            other = {k: (v.roll(1, 0) if v is not None else None) for k, v in inputs.items()
                     if k in ("patch_features", "cls_features")}
            outs["shuffled"] = model.generate(**(inputs | other), full_tokens=True)
        texts = {name: out.texts for name, out in outs.items()} | {"majority": [majority] * len(answers)}
        types = batch.get("question_type") or [""] * len(answers)
        for name, pred in texts.items():
            acc[name].update(pred, answers, valid)
            for qt in set(types) - {""}:
                mask = valid & torch.tensor([t == qt for t in types])
                by_type.setdefault(qt, {n: VQAAccuracy() for n in names})[name].update(pred, answers, mask)
        tokens += adaptive.allocation.visual_tokens[valid].tolist()
        low_tokens += outs[f"learned@{LOW}"].allocation.visual_tokens[valid].tolist()
    return {"accuracy": {n: float(m.compute()) for n, m in acc.items()}, "majority_answer": majority,
            "accuracy_by_type": {qt: {n: float(m.compute()) for n, m in ms.items()}
                                 for qt, ms in sorted(by_type.items())},
            "visual_tokens": {"mean": statistics.mean(tokens), "min": min(tokens), "max": max(tokens)},
            "visual_tokens_fixed_budget": statistics.mean(low_tokens),
            "samples": len(tokens)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="arrcoc demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default runs/demo)")
    parser.add_argument("--steps", type=int, nargs=3, default=None, metavar=("P1", "P2", "P3"),
                        help="optimizer steps of phases 1, 2, 3 (default: the configs' max_steps)")
    parser.add_argument("--train", type=int, default=20000, help="sample-task training samples")
    parser.add_argument("--val", type=int, default=500, help="sample-task validation samples")
    parser.add_argument("--cache-dir", default=None, help="sample-task cache (default: the configs')")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="skip training: compare the variants on this phase-3 checkpoint (e.g. a previous demo's "
                             "runs/demo/phase3/checkpoints/last.ckpt)")
    args = parser.parse_args(argv)
    if not CONFIGS.is_dir():
        parser.error(f"{CONFIGS} not found: run the demo from a source checkout (make demo)")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint} does not exist (give a phase-3 last.ckpt)")
    from arrcoc.console import console_logging
    from arrcoc.train.cli import build_cli

    console_logging()  # the init_from reports and parameter tables, as `arrcoc fit` shows them
    t_start = time.perf_counter()
    steps = args.steps or [None, None, None]
    prev = args.checkpoint
    for phase in (1, 2, 3) if args.checkpoint is None else ():
        print(f"\n=== phase {phase} ({['align', 'relevance', 'allocation fine-tune'][phase - 1]}) ===", flush=True)
        argv_p = _phase_args(phase, steps[phase - 1] or _config_steps(phase), args.out, args, prev)
        build_cli(["fit", *argv_p])
        prev = args.out / f"phase{phase}" / "checkpoints" / "last.ckpt"

    print("\n=== evaluation on the validation split ===", flush=True)
    cli = build_cli(_phase_args(3, 1, args.out / "eval", args, prev), run=False)
    model, dm = cli.model.model, cli.datamodule
    dm.prepare_data()
    dm.setup("validate")
    results = evaluate(model, dm)
    batch = next(iter(dm.val_dataloader()))
    batch = model_inputs(batch)
    t_full, t_adapt = step_time(model, batch, True), step_time(model, batch, False)
    results["step_time_ms"] = {"full": 1000 * t_full, "adaptive": 1000 * t_adapt, "ratio": t_full / t_adapt}
    results["wall_s"] = time.perf_counter() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    _print_table(results, model.encoder.num_patches)
    return 0


def _config_steps(phase: int) -> int:
    import yaml

    return int(yaml.safe_load((CONFIGS / f"phase{phase}.yaml").read_text())["trainer"]["max_steps"])


def _print_table(r: dict, n: int) -> None:
    a, vt, st = r["accuracy"], r["visual_tokens"], r["step_time_ms"]
    adaptive = f"{vt['mean']:.0f} (min {vt['min']}, max {vt['max']})"
    low = f"{r['visual_tokens_fixed_budget']:.0f}"
    rows = [("all tokens (baseline)", f"{n}", a["full"]), ("all tokens, another image", f"{n}", a["shuffled"]),
            ("adaptive (learned)", adaptive, a["adaptive"]),
            ("random, same budgets", adaptive, a["random"]), ("grid, same budgets", adaptive, a["grid"]),
            *((f"{sel} selection, budget {LOW}", low, a[f"{sel}@{LOW}"]) for sel in SELECTIONS),
            (f"majority answer ({r['majority_answer']!r})", "0", a["majority"])]
    print(f"\n{'variant':34s}{'visual tokens / sample':>30s}{'VQA accuracy':>14s}")
    for name, tok, acc in rows:
        print(f"{name:34s}{tok:>30s}{100 * acc:>13.1f}%")
    if r.get("accuracy_by_type"):
        cols = ("full", "shuffled", "adaptive", "random", "grid", *(f"{sel}@{LOW}" for sel in SELECTIONS), "majority")
        print(f"\n{'question type':20s}" + "".join(f"{'all' if c == 'full' else c:>11s}" for c in cols))
        for qt, accs in r["accuracy_by_type"].items():
            print(f"{qt:20s}" + "".join(f"{100 * accs[c]:>10.1f}%" for c in cols))
    print(f"\nadaptive / all-token accuracy: {100 * a['adaptive'] / max(a['full'], 1e-9):.1f}%   "
          f"({r['samples']} validation questions)")
    print(f"training step, full vs adaptive: {st['full']:.0f} ms vs {st['adaptive']:.0f} ms = "
          f"{st['ratio']:.2f}x faster (tiny preset, this machine)")
    print(f"wall time {r['wall_s'] / 60:.1f} min")
