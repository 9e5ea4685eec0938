"""``arrcoc demo``: phase 1 -> 2 -> 3 on the embedded default, then the comparison that matters.

Each phase runs from its YAML in ``configs/`` (tiny preset, the sample task generated on first use),
hands its weights to the next through ``init_from``, and the final model is compared on the sample
task's validation split with ``arrcoc bench tokens``'s machinery (a subset of its methods): all 576
tokens; all tokens of another sample's image (the gap to "all tokens" is how much the model uses the
image); its own adaptive budgets; one fixed k at the adaptive mean (what adaptivity buys); random and
grid selections at the same per-sample budgets; the model's own scorers with the question withheld and
with another sample's question (what following the question buys); the same at a mean of 64; the
majority answer. Also the budget spread, the share of the asked-about objects' patches kept (against
the scene's other objects, and with another question's selection), and the measured step-time ratio of
full-token vs adaptive training steps. Everything is also written to ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

from arrcoc.bench.report import summarize
from arrcoc.bench.tokens import BenchConfig, TokenBench
from arrcoc.data import model_inputs
from arrcoc.data.shards import shard_samples
from arrcoc.metrics.vqa import vqa_soft_accuracy
from arrcoc.processing import majority_answer
from arrcoc.processing.files import write_text

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LOW = 64  # the allocator's minimum budget (about 11% of the 576 tokens)
#: the token benchmark's methods the demo shows (adaptive always runs)
METHODS = ("full", "shuffled", "fixed", "random", "grid", "question_blind", "swapped_selection", "teacher")


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


def _answers(urls: list[str]) -> list[list[str]]:
    """Every sample's reference answers (json only: images are not decoded)."""
    out = []
    for url in urls:
        for raw in shard_samples(url, lambda skip: None):  # the training run counts skips; this only peeks
            if "json" in raw.files:
                out.append(json.loads(raw.files["json"])["answers"])
    return out


def majority_baseline(train_urls: list[str]) -> str:
    """The most frequent training answer."""
    counts = Counter(majority_answer(answers) for answers in _answers(train_urls))
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
    """The token benchmark's demo methods on the validation split: accuracy (± one standard error, overall and
    per question type), the budget spread, question use, the balancer, and the majority answer."""
    bench = TokenBench(model, BenchConfig(means=(LOW,), methods=METHODS))
    bench.calibrate(datamodule.val_dataloader())
    records = bench.run(datamodule.val_dataloader())
    summary = summarize(records, list(model.scorer_names), "arrcoc demo", tolerance=0.1, notes=[])
    points = {f"{name}@{row['target']}": row for name, rows in summary["methods"].items() for row in rows}
    majority = majority_baseline(datamodule.sources["train"][0].urls)
    val_answers = [a for source in datamodule.sources["val"] for a in _answers(source.urls)]
    tokens = [r["methods"]["adaptive@head"][0] for r in records]
    types = sorted({t for row in points.values() for t in row["by_type"]})
    return {"accuracy": {k: row["accuracy"] for k, row in points.items()}
            | {"majority": statistics.fmean(vqa_soft_accuracy(majority, a) for a in val_answers)},
            "stderr": {k: row["stderr"] for k, row in points.items()},
            "visual_tokens_per_method": {k: row["mean_tokens"] for k, row in points.items()},
            "majority_answer": majority,
            "accuracy_by_type": {t: {k: row["by_type"].get(t) for k, row in points.items()} for t in types},
            "visual_tokens": {"mean": statistics.fmean(tokens), "min": min(tokens), "max": max(tokens)},
            "budget": summary["budget"], "fixed_k": round(bench.head_mean),
            "question_use": summary["question_use"], "recall": summary["recall"],
            "recall_other": summary["recall_other"],
            "balancer": summary["balancer"].get("all"),
            "samples": len(records)}


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
    from arrcoc.console import console_logging, quiet_libraries
    from arrcoc.train.cli import build_cli

    console_logging()  # the init_from reports and parameter tables, as `arrcoc fit` shows them
    quiet_libraries()  # library messages that say nothing to a user of arrcoc (arrcoc fit --verbose keeps them)
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
    write_text(args.out / "results.json", json.dumps(results, indent=1))
    _print_table(results, model.encoder.num_patches)
    return 0


def _config_steps(phase: int) -> int:
    import yaml

    return int(yaml.safe_load((CONFIGS / f"phase{phase}.yaml").read_text())["trainer"]["max_steps"])


def _print_table(r: dict, n: int) -> None:
    a, se, vt, st, b = r["accuracy"], r["stderr"], r["visual_tokens"], r["step_time_ms"], r["budget"]
    tok = r["visual_tokens_per_method"]
    spread = f"{vt['mean']:.0f} (min {vt['min']}, max {vt['max']})"
    rows = [("all tokens (baseline)", "full@576"), ("all tokens, another image", "shuffled@576"),
            ("adaptive (learned budgets)", "adaptive@head"), ("fixed k at the adaptive mean", "fixed@head"),
            ("random, same budgets", "random@head"), ("grid, same budgets", "grid@head"),
            ("own scorers, question withheld", "question_blind@head"),
            ("another question's selection", "swapped_selection@head"),
            ("all-token model's saliency (oracle)", "teacher@head"),
            (f"adaptive at mean {LOW}", f"adaptive@{LOW}"), (f"fixed k = {LOW}", f"fixed@{LOW}"),
            (f"random at mean {LOW}", f"random@{LOW}"), (f"grid at mean {LOW}", f"grid@{LOW}"),
            (f"another question's selection, {LOW}", f"swapped_selection@{LOW}")]
    print(f"\n{'variant':38s}{'visual tokens / sample':>28s}{'VQA accuracy':>14s}{'± s.e.':>8s}")
    for name, key in rows:
        if key in a:
            count = spread if key == "adaptive@head" else f"{tok[key]:.0f}"
            print(f"{name:38s}{count:>28s}{100 * a[key]:>13.1f}%{100 * (se[key] or 0):>8.1f}")
    print(f"{'majority answer (' + repr(r['majority_answer']) + ')':38s}{'0':>28s}{100 * a['majority']:>13.1f}%")
    if r.get("accuracy_by_type"):
        cols = ("full@576", "shuffled@576", "adaptive@head", "fixed@head", "swapped_selection@head", f"adaptive@{LOW}")
        heads = ("all", "other img", "adaptive", "fixed", "swapped", f"adapt@{LOW}")
        print(f"\n{'question type':16s}" + "".join(f"{h:>11s}" for h in heads))
        for qt, accs in r["accuracy_by_type"].items():
            print(f"{qt:16s}" + "".join(f"{100 * (accs.get(c) or 0):>10.1f}%" for c in cols))
    print(f"\nbudgets of the head (kept patches): p10 {b['p10']:.0f}, p50 {b['p50']:.0f}, p90 {b['p90']:.0f}")
    if r.get("question_use"):
        print("asked-about objects' patches kept (named / the scene's other objects / named, with another question's "
              "selection):")
        for k, q in r["question_use"].items():
            label = "adaptive budgets" if k == "adaptive" else f"k = {k}"
            print(f"  {label:18s}{100 * q['recall_named']:6.1f}% / {100 * q['recall_other']:5.1f}% / "
                  f"{100 * q['recall_swapped']:5.1f}%")
    if r.get("recall"):
        print("per ranking at the head's budgets, named / other objects' patches kept: "
              + ", ".join(f"{m} {100 * v:.1f} / {100 * r['recall_other'].get(m, 0):.1f}%"
                          for m, v in r["recall"].items()))
    if r.get("balancer"):
        print("balancer weights (mean): " + ", ".join(f"{s} {w['mean']:.2f}" for s, w in r["balancer"].items()))
    print(f"\nadaptive / all-token accuracy: {100 * a['adaptive@head'] / max(a['full@576'], 1e-9):.1f}%   "
          f"({r['samples']} validation questions)")
    print(f"training step, full vs adaptive: {st['full']:.0f} ms vs {st['adaptive']:.0f} ms = "
          f"{st['ratio']:.2f}x faster (tiny preset, this machine)")
    print(f"wall time {r['wall_s'] / 60:.1f} min")
