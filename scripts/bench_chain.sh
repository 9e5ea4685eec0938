#!/bin/bash
# The measurement behind docs/BENCHMARKS.md (issue 17): the demo (phases 1-3 and its table), the fair full-token
# phase 3 from the demo's phase-2 weights, then `arrcoc bench tokens` with the oracle against that reference.
# Run from the repository root with arrcoc installed: scripts/bench_chain.sh [RUN_DIR] (default runs).
# About 25 minutes on 2 CPU cores; logs in RUN_DIR/*.log.
set -euo pipefail
RUN=${1:-runs}
mkdir -p "$RUN"
date
arrcoc demo --out "$RUN/demo" > "$RUN/demo.log" 2> "$RUN/demo.err"
date
arrcoc fit --config configs/phase3.yaml --config configs/ablations/full-tokens.yaml \
  --model.init_args.init_from "$RUN/demo/phase2/checkpoints/last.ckpt" \
  --trainer.default_root_dir "$RUN/demo/phase3-full" --trainer.limit_val_batches 0 > "$RUN/full.log" 2>&1
date
arrcoc bench tokens --config configs/phase3.yaml --ckpt "$RUN/demo/phase3/checkpoints/last.ckpt" \
  --full-ckpt "$RUN/demo/phase3-full/checkpoints/last.ckpt" --oracle --out "$RUN/bench" \
  --data.sample_task.train 16 --data.sample_task.val 500 --data.num_workers 0 \
  --data.cache_dir "$RUN/bench-cache" > "$RUN/bench.log" 2>&1
date
