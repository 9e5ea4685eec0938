"""``arrcoc data ...``: convert, generate, inspect and benchmark VQA shards."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path

from arrcoc.data.shards import read_manifest
from arrcoc.processing import majority_answer


def _common_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output directory (shards + manifest.json)")
    p.add_argument("--prefix", default=None, help="shard name prefix (default: per command)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arrcoc data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    conv = sub.add_parser("convert", help="convert a VQA dataset to shards")
    csub = conv.add_subparsers(dest="format", required=True)
    v = csub.add_parser("vqav2", help="the official VQAv2 JSON layout")
    v.add_argument("--questions", type=Path, required=True, help="v2_OpenEnded_mscoco_*_questions.json")
    v.add_argument("--annotations", type=Path, help="v2_mscoco_*_annotations.json (omit for the test split)")
    v.add_argument("--images", type=Path, required=True, help="directory of COCO images")
    v.add_argument("--allow-outside-root", action="store_true",
                   help="write images that are symlinks resolving outside --images (default: skip them)")
    _common_out(v)
    j = csub.add_parser("jsonl", help="one JSON object per line: image, question, answers|answer[, question_id]")
    j.add_argument("--manifest", type=Path, required=True, help="the .jsonl file")
    j.add_argument("--images-root", type=Path, required=True, help="directory the 'image' paths are relative to")
    j.add_argument("--allow-outside-root", action="store_true",
                   help="write images that resolve outside --images-root (../, absolute paths, symlinks); "
                        "default: skip them as outside_images_root")
    _common_out(j)

    s = sub.add_parser("sample", help="generate the bundled sample task")
    s.add_argument("--out", type=Path, required=True, help="output directory (gets train/ and val/)")
    s.add_argument("--train", type=int, default=20000, help="training samples (default 20000)")
    s.add_argument("--val", type=int, default=1000, help="validation samples (default 1000)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--image-size", type=int, default=128, help="image side in pixels (default 128)")
    s.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    s.add_argument("--list-objects", type=float, default=0.25,
                   help="share of training questions that ask to list every object (default 0.25)")
    s.add_argument("--overwrite", action="store_true", help="replace datasets already in --out")

    i = sub.add_parser("inspect", help="counts, answer distribution and a few samples of a dataset")
    i.add_argument("path", help="a dataset directory, shard, brace pattern or pipe: command")
    i.add_argument("--show", type=int, default=3, help="samples to print (default 3)")

    b = sub.add_parser("bench", help="samples/s through decode + transform + tokenize, per worker and in total")
    b.add_argument("path", help="a dataset directory, shard, brace pattern or pipe: command")
    b.add_argument("--encoder", action="append", help="open_clip names to bench (default: the tiny preset "
                   "and EVA02-L-14-336)")
    b.add_argument("--llm", default="arrcoc-tiny-lm", help="tokenizer to use (default arrcoc-tiny-lm)")
    b.add_argument("--workers", type=int, default=2, help="loader workers for the total (default 2)")
    b.add_argument("--samples", type=int, default=2000, help="samples per measurement (default 2000)")
    b.add_argument("--batch-size", type=int, default=32)

    # Listed here for `arrcoc data --help`; it runs the encoder (model code, which the data package does not
    # import), so the `arrcoc` entry point hands it to arrcoc.cache_features before this parser sees it.
    sub.add_parser("cache-features", add_help=False,
                   help="run the frozen encoder once and write a feature cache (arrcoc data cache-features --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "cache-features":
            print("arrcoc data: run cache-features through the arrcoc command: arrcoc data cache-features --help")
            return 2
        return {"convert": _convert, "sample": _sample, "inspect": _inspect, "bench": _bench}[args.command](args)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"arrcoc data {args.command}: {err}", file=sys.stderr)
        return 2


def _convert(args) -> int:
    from arrcoc.data.convert import jsonl_items, prepare_out_dir, vqav2_items, write_items

    prefix = args.prefix or args.format
    if args.shard_size < 1:
        raise ValueError(f"--shard-size {args.shard_size} must be >= 1")
    if args.format == "vqav2":
        for p in (args.questions, args.images) + ((args.annotations,) if args.annotations else ()):
            if not p.exists():
                raise FileNotFoundError(f"{p} does not exist")
        items, total = vqav2_items(args.questions, args.annotations, args.images, args.allow_outside_root)
        source = args.questions
    else:
        for p in (args.manifest, args.images_root):
            if not p.exists():
                raise FileNotFoundError(f"{p} does not exist")
        items, total = jsonl_items(args.manifest, args.images_root, args.allow_outside_root)
        source = args.manifest
    prepare_out_dir(args.out, prefix, args.overwrite)
    report = write_items(items, args.out, prefix, args.shard_size, total=total)
    print(report.summary())
    if not report.written:
        print(f"arrcoc data convert {args.format}: {report.nothing_written(source)}", file=sys.stderr)
        return 1
    return 0


def _sample(args) -> int:
    from arrcoc.data.convert import prepare_out_dir
    from arrcoc.data.sample_task import SampleTaskConfig, write_split

    if args.shard_size < 1:
        raise ValueError(f"--shard-size {args.shard_size} must be >= 1")
    if not 0.0 <= args.list_objects <= 1.0:
        raise ValueError(f"--list-objects {args.list_objects} must be in [0, 1]")
    cfg = SampleTaskConfig(train=args.train, val=args.val, seed=args.seed, image_size=args.image_size,
                           samples_per_shard=args.shard_size, list_objects=args.list_objects)
    for split, count in (("train", cfg.train), ("val", cfg.val)):
        if count > 0:
            prepare_out_dir(args.out / split, split, args.overwrite)
            t0 = time.perf_counter()
            manifest = write_split(args.out / split, split, count, cfg)
            dt = time.perf_counter() - t0
            print(f"{split}: {manifest['total']} samples in {len(manifest['shards'])} shards "
                  f"({manifest['total'] / dt:.0f} samples/s) -> {args.out / split}")
    return 0


def _inspect(args) -> int:
    from arrcoc.data.shards import Skip
    from arrcoc.data.sources import resolve
    from arrcoc.data.stream import SkipCounter, decoded

    source = resolve(args.path)
    manifest = read_manifest(args.path) if Path(args.path).is_dir() else None
    skips = SkipCounter()
    logging.getLogger("arrcoc.data").setLevel(logging.ERROR)
    n, answers, types, shown = 0, Counter(), Counter(), []
    for url in source.urls:
        for item in decoded(url, skips):
            if isinstance(item, Skip):
                continue
            n += 1
            answers[majority_answer(item["answers"]) or "<none>"] += 1
            types[item.get("answer_type", "-")] += 1
            if len(shown) < args.show:
                size = item["image"].size if "image" in item else tuple(item["features"].shape)
                shown.append(f"  {item['__key__']}: {item['question']!r} -> {item['answers'][:3]} ({size})")
    print(f"{args.path}: {len(source.urls)} shards, {n} readable samples"
          + (f" (manifest says {manifest['total']})" if manifest else ""))
    print(f"skipped: {sum(skips.counts.values())}" + (f" {dict(skips.counts)}" if skips.counts else ""))
    if n:
        print(f"answer types: {dict(types)}")
        print(f"{len(answers)} distinct answers; top: " + ", ".join(f"{a} {c}" for a, c in answers.most_common(10)))
        print("samples:\n" + "\n".join(shown))
    return 0 if n else 1


def _bench(args) -> int:
    from arrcoc.data.bench import run_bench

    return run_bench(args.path, args.encoder or ["arrcoc-tiny-vit", "EVA02-L-14-336"], args.llm, args.workers,
                     args.samples, args.batch_size)


if __name__ == "__main__":
    raise SystemExit(main())
