"""``arrcoc bench tokens``: the accuracy-per-token benchmark from a config and a checkpoint (see
:mod:`arrcoc.bench.tokens` for the methods and :mod:`arrcoc.bench.report` for what is written).
``arrcoc bench speed``: training-step, prefill and decode times per variant against the ideal (see
:mod:`arrcoc.bench.speed`)."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from arrcoc.bench.budgets import ORACLE_KS
from arrcoc.bench.report import summarize, write
from arrcoc.bench.tokens import BenchConfig, TokenBench
from arrcoc.console import console_logging, quiet_libraries


def _build(configs: list[str], ckpt: Path, out: Path, overrides: list[str]):
    """The model (weights from ``ckpt``) and the data module the configs describe, as ``arrcoc validate`` builds
    them."""
    from arrcoc.train.cli import build_cli

    # The trainer built alongside is never run: its accelerator and tip messages would only be noise here.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    argv = [a for c in configs for a in ("--config", c)]
    argv += ["--model.init_args.init_from", str(ckpt), "--trainer.default_root_dir", str(out / "cli"), *overrides]
    cli = build_cli(argv, run=False)
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("validate")
    return cli.model.model, dm


def _build_model(configs: list[str], ckpt: Path | None, out: Path, overrides: list[str]):
    """The model alone the configs describe (weights from ``ckpt`` when given): no data is prepared."""
    from arrcoc.train.cli import build_cli

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    argv = [a for c in configs for a in ("--config", c)]
    # Without a checkpoint, a config's own init_from (the previous phase's) is dropped: timing needs no weights.
    argv += ["--model.init_args.init_from", "null" if ckpt is None else str(ckpt)]
    argv += ["--trainer.default_root_dir", str(out / "cli"), *overrides]
    return build_cli(argv, run=False).model.model


def tokens_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="arrcoc bench tokens", description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", required=True, help="a phase config (repeat for layers)")
    p.add_argument("--ckpt", type=Path, required=True, help="the trained checkpoint to measure (e.g. phase 3's)")
    p.add_argument("--out", type=Path, required=True, help="where tokens.json, tokens.md and pareto.png go")
    p.add_argument("--full-ckpt", type=Path, default=None,
                   help="a model trained with all tokens (same architecture): the fair full-token reference")
    p.add_argument("--oracle", action="store_true", help=f"answer every sample at k in {list(ORACLE_KS)} too")
    p.add_argument("--oracle-tolerance", type=float, default=0.1, help="nats above the all-token loss (default 0.1)")
    p.add_argument("--means", type=float, nargs="+", default=[64, 128, 198, 300],
                   help="target mean budgets the head is moved to (default 64 128 198 300)")
    p.add_argument("--limit", type=int, default=None, help="at most this many validation samples")
    p.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                   help="only these methods (e.g. full fixed random swapped_selection; `scorer` for the single-scorer "
                        "ablations); adaptive always runs. Default: every one")
    p.epilog = "Other options are config overrides, as for arrcoc validate (e.g. --data.eval_batch_size 32)."
    args, overrides = p.parse_known_args(argv)
    for path, flag in ((args.ckpt, "--ckpt"), (args.full_ckpt, "--full-ckpt")):
        if path is not None and not path.is_file():
            p.error(f"{flag} {path} does not exist (give a checkpoint file such as runs/phase3/checkpoints/last.ckpt)")
    console_logging()
    quiet_libraries()
    t0 = time.perf_counter()
    model, dm = _build(args.config, args.ckpt, args.out, overrides)
    full_model = _build(args.config, args.full_ckpt, args.out, overrides)[0] if args.full_ckpt else None
    config = BenchConfig(means=tuple(args.means), oracle=args.oracle, oracle_tolerance=args.oracle_tolerance,
                         limit=args.limit, methods=None if args.methods is None else tuple(args.methods))
    bench = TokenBench(model, config, full_model)
    bench.calibrate(dm.val_dataloader())
    records = bench.run(dm.val_dataloader())
    command = shlex.join(["arrcoc", "bench", "tokens", *argv])
    summary = summarize(records, list(model.scorer_names), command, args.oracle_tolerance, config.notes)
    summary["seconds"] = time.perf_counter() - t0
    write(summary, args.out)
    print((args.out / "tokens.md").read_text())
    return 0


def speed_main(argv: list[str]) -> int:
    import torch

    from arrcoc.bench import speed

    p = argparse.ArgumentParser(prog="arrcoc bench speed", description=speed.__doc__.splitlines()[0])
    p.add_argument("--config", action="append", default=None,
                   help="a phase config (repeat for layers): time the model it builds instead of --shapes")
    p.add_argument("--ckpt", type=Path, default=None,
                   help="weights for the --config model (optional: random/preset weights time the same); with it, "
                        "adaptive uses the checkpoint's own head budgets")
    p.add_argument("--shapes", default="tiny",
                   help=f"model shapes without --config: {', '.join(speed.SHAPES)} (1.5b/7b: random weights, CUDA "
                        "only; default tiny)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: cuda where visible)")
    p.add_argument("--batch-size", type=int, default=8, help="samples per batch (default 8)")
    p.add_argument("--repeats", type=int, default=10, help="measured repeats, medians reported (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="repeats run first and dropped (default 2)")
    p.add_argument("--out", type=Path, required=True, help="where speed.json and speed.md go")
    p.epilog = "With --config, other options are config overrides, as for arrcoc validate."
    args, overrides = p.parse_known_args(argv)
    if overrides and not args.config:
        p.error(f"unrecognized arguments: {' '.join(overrides)} (config overrides need --config)")
    if args.config and args.shapes != "tiny":
        p.error(f"--shapes {args.shapes} applies without --config; the configs decide the model's shapes")
    if args.ckpt is not None and not args.config:
        p.error("--ckpt needs --config (the architecture the checkpoint's weights belong to)")
    if args.ckpt is not None and not args.ckpt.is_file():
        p.error(f"--ckpt {args.ckpt} does not exist (give a checkpoint file such as runs/phase3/checkpoints/last.ckpt)")
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--repeats", args.repeats, 1),
                             ("--warmup", args.warmup, 0)):
        if value < low:
            p.error(f"{flag} {value} must be >= {low}")
    try:
        speed.check_device(args.shapes, args.device)
    except ValueError as err:
        p.error(str(err))
    config = speed.SpeedConfig(batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup,
                               head_budgets=args.ckpt is not None)
    console_logging()
    quiet_libraries()
    device = torch.device(args.device)
    torch.manual_seed(config.seed)
    if args.config:
        model = _build_model(args.config, args.ckpt, args.out, overrides).to(device)
    else:
        model = speed.build_model(args.shapes, device)
    command = shlex.join(["arrcoc", "bench", "speed", *argv])
    summary = speed.run_speed(model, config, device, command, "config" if args.config else args.shapes)
    speed.write(summary, args.out)
    print((args.out / "speed.md").read_text())
    return 0


BENCHMARKS = {"tokens": tokens_main, "speed": speed_main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[2:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: arrcoc bench tokens --config FILE --ckpt CKPT --out DIR [--oracle] [--full-ckpt CKPT]\n"
              "       arrcoc bench speed --out DIR [--shapes tiny|1.5b|7b | --config FILE [--ckpt CKPT]] "
              "[--device cpu|cuda] [--batch-size B] [--repeats R] [--warmup W]")
        return 0 if argv else 2
    if argv[0] not in BENCHMARKS:
        print(f"arrcoc bench: unknown benchmark {argv[0]!r}; valid: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    return BENCHMARKS[argv[0]](argv[1:])
