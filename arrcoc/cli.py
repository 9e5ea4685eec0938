"""The one ``arrcoc`` entry point. Subcommands share it; each lives in its own module."""

from __future__ import annotations

import sys

LIGHTNING = ("fit", "validate", "test", "predict")

COMMANDS = {
    "demo": ("arrcoc.demo", "train phases 1 -> 2 -> 3 on the tiny preset, then compare token budgets"),
    "data": ("arrcoc.data.cli", "convert, generate, inspect and benchmark VQA shards; cache encoder features"),
    "bench": ("arrcoc.bench.cli", "benchmarks: `bench tokens` (accuracy per visual token), `bench speed` (step times)"),
    "visualize": ("arrcoc.visualize", "draw where the allocation looks for an image and question(s), side by side"),
    "pretrain-encoder": ("arrcoc.pretrain.encoder", "pretrain the embedded tiny encoder on the sample task"),
    "pretrain-lm": ("arrcoc.pretrain.lm", "pretrain the embedded tiny LLM on the sample task's questions, in words"),
    "slurm": ("arrcoc.slurm", "write (or --submit) an sbatch script for a multi-node fit that requeues itself"),
}


def main(argv: list[str] | None = None) -> int:
    explicit = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: arrcoc <command> [options]\n\ncommands:")
        print("  fit               train a phase: arrcoc fit --config configs/phase1.yaml")
        print("  validate          evaluate on the validation split (also: test, predict)")
        for name, (_, desc) in COMMANDS.items():
            print(f"  {name:18s}{desc}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name in LIGHTNING:
        from arrcoc.train.cli import main as lightning_main

        return lightning_main(argv if explicit else None)
    if name == "data" and rest[:1] == ["cache-features"]:  # runs the encoder: model code, so not in arrcoc.data
        from arrcoc.cache_features import main as cache_main

        return int(cache_main(rest[1:]) or 0)
    if name not in COMMANDS:
        valid = ", ".join(list(LIGHTNING) + list(COMMANDS))
        print(f"arrcoc: unknown command {name!r}; valid: {valid}", file=sys.stderr)
        return 2
    module = __import__(COMMANDS[name][0], fromlist=["main"])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
