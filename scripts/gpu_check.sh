#!/usr/bin/env bash
# One GPU check of arrcoc on a lent device machine (one H100/H200, CUDA, no network), run once:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site || exit; bash scripts/gpu_check.sh
#
# Steps, each under `timeout`, each logged to $OUT and recorded PASS/FAIL/TIMEOUT/SKIP in $OUT/summary.txt; a failed
# step does not stop the next; the whole script keeps to $BUDGET seconds (default 420). At most 8 files land in
# $OUT (the device tool brings back no more): summary.txt, setup.log, bench.log, speed.log, pytest_cuda.log,
# deepspeed.log, pytest_all.log.
#   setup       wheels from .whl/ into $SITE (plus setuptools/typing_extensions from .whl/extra/ where the
#               machine's are older than our wheels need), arrcoc itself (editable: `python -m arrcoc.cli` and
#               `python -m pytest` run from the repo root, where a plain install would be shadowed by ./arrcoc,
#               which lacks arrcoc.data and arrcoc.callbacks), versions, `pip check` of our packages, the tiny
#               encoder's `shapes` weights
#   bench       phase 1, bf16-mixed on the GPU, 50 steps, no validation, alone on the machine: samples/s
#   speed       `arrcoc bench speed --shapes 1.5b` and `--shapes 7b` (EVA02-L-14-336 + a Qwen2-1.5B- / Llama-7B-
#               shaped decoder, random weights, bf16), still alone on the machine: full / fixed@198 / fixed@64 /
#               adaptive@198, from pixels and from features, against the ideal ratio (the reference ceilings:
#               ../shared/reference/gpu_token_speed.*); then scripts/packing_bench.py on CUDA (pad vs length groups,
#               and varlen under flash_attention_2 where flash_attn is installed)
#   pytest_all  the whole suite (-n 8 where pytest-xdist is), --timeout 600, in the background from here on:
#               torch 2.11 / transformers 5.17 are the oldest versions we support
#   cuda_tests  tests/test_callbacks.py (its real ZeRO-2 test runs only where CUDA is)
#   deepspeed   (also: phase 3 under ZeRO-3, and with LoRA under ZeRO-2: 10 steps, resume to 14, predict from the
#               consolidated file)
#   deepspeed   phase 1 -> phase 2 (bf16-mixed, 10 steps each) -> phase 3 under DeepSpeed ZeRO-2
#               (configs/presets/deepspeed.yaml, 20 steps), then consolidated.pt loads with weights_only=True,
#               the run resumes from its ZeRO checkpoint directory to step 24 (--ckpt_path), and
#               `arrcoc validate --model.init_args.init_from consolidated.pt` reports every component loaded
#
# Locally (no GPU; the GPU steps fail, the rest is exercised), with a scratch venv's python that sees torch (the
# project is installed editable into PY's environment) and wheels built for its Python version:
#   PY=/tmp/venv/bin/python WHL=/tmp/wheels OUT=/tmp/gpu-check ACCEL=cpu PRECISION=32-true bash scripts/gpu_check.sh
# Wheels to carry in .whl/ (what a CUDA image with torch, transformers and lightning lacks; Python 3.12):
#   open_clip_torch ftfy wcwidth webdataset braceexpand omegaconf jsonargparse docstring_parser typeshed_client
#   pydantic pydantic_core annotated_types typing_inspection hjson, fetched with `pip download --no-deps
#   --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl NAME==VERSION`, and
#   deepspeed, which PyPI has as an sdist only: `pip wheel --no-deps --no-build-isolation deepspeed -w .whl` in a
#   venv with torch. .whl/extra/ may hold setuptools >= 77 and typing_extensions >= 4.16 for older images.
# Knobs: PY (interpreter), WHL (wheel folder), SITE (target of the wheels), OUT, WORK (run dirs),
# BUDGET (seconds for the whole script, default 420), XDIST_N (default 8), SKIP_STEPS (e.g. "pytest_all"),
# PYTEST_SELECT (what pytest_all runs; default: everything), ACCEL/PRECISION of the non-DeepSpeed runs
# (default gpu/bf16-mixed), SIDE_JOB (a command run in the background once arrcoc imports, waited for at the end).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD
PY=${PY:-python3}
WHL=${WHL:-.whl}
SITE=${SITE:-/tmp/site}
OUT=${OUT:-/tmp/gpu-check-out}
WORK=${WORK:-/tmp/arrcoc-gpu}
BUDGET=${BUDGET:-420}
XDIST_N=${XDIST_N:-8}
SKIP_STEPS=${SKIP_STEPS:-}
T0=$(date +%s)

mkdir -p "$OUT" "$WORK"
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
export PYTHONUNBUFFERED=1
case ":${PYTHONPATH:-}:" in *":$SITE:"*) ;; *) export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} ;; esac
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1          # no network there: fail fast, never wait on a hub
export MPLCONFIGDIR=$WORK/mpl
unset MASTER_ADDR MASTER_PORT WORLD_SIZE RANK LOCAL_RANK NODE_RANK   # each run picks its own free port

note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }

# run_step NAME LIMIT LOG CMD...: runs CMD under timeout (at most LIMIT s, at most what the budget has left),
# appends its output to LOG, records PASS/FAIL/TIMEOUT/SKIP with its time in the summary.
run_step() {
    local name=$1 limit=$2 log=$3; shift 3
    local budget; budget=$(( $(left) - 10 ))
    if [[ " $SKIP_STEPS " == *" ${name%%/*} "* ]]; then note "SKIP    $name (SKIP_STEPS)"; return 3; fi
    if (( budget < 20 )); then note "SKIP    $name (budget spent: $(left) s left)"; return 3; fi
    (( limit > budget )) && limit=$budget
    local t=$(date +%s) rc
    echo "===== $name ($(date -u +%T), limit ${limit}s): $*" >> "$log"
    # through bash -c, so that CMD may be one of the functions below (exported with export -f)
    timeout -k 15 "$limit" bash -c '"$@"' "$name" "$@" >> "$log" 2>&1
    rc=$?
    local dt=$(( $(date +%s) - t )) status=PASS
    (( rc != 0 )) && status=FAIL
    (( rc == 124 || rc == 137 )) && status=TIMEOUT
    echo "===== $name: $status rc=$rc ${dt}s" >> "$log"
    note "$(printf '%-7s %-28s rc=%-3s %4ss  (log: %s)' "$status" "$name" "$rc" "$dt" "${log#"$OUT"/}")"
    return $rc
}

arrcoc() { "$PY" -m arrcoc.cli "$@"; }   # the console script may not be on PATH with --target installs
export PY WHL SITE OUT WORK
export -f arrcoc

note "arrcoc GPU check, $(date -u '+%F %T') UTC, host $(hostname), repo $ROOT, python $PY, budget ${BUDGET}s"

# ---------------------------------------------------------------------------------------------------- setup
SETUP=$OUT/setup.log
install_wheels() {
    set -e
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHL"/*.whl
    # setuptools >= 77 builds our pyproject (SPDX license string); pydantic 2.14 wants typing_extensions >= 4.16.
    "$PY" - "$WHL" "$SITE" <<'EOF'
import glob, subprocess, sys
from importlib.metadata import version, PackageNotFoundError
from packaging.version import Version
whl, site = sys.argv[1:]
for dist, need in (("setuptools", "77"), ("typing_extensions", "4.16.0")):
    try:
        have = version(dist)
    except PackageNotFoundError:
        have = "0"
    if Version(have) >= Version(need):
        print(f"{dist} {have} already >= {need}")
        continue
    wheels = glob.glob(f"{whl}/extra/{dist}-*.whl")
    print(f"{dist} {have} < {need}: installing {wheels}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", site, *wheels], check=True)
EOF
}
install_project() {
    # Editable into the interpreter's environment (what `make install` does): its finder maps arrcoc.data and
    # arrcoc.callbacks to data/ and callbacks/ even when ./arrcoc comes first on sys.path.
    if "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . ; then
        return 0
    fi
    echo "editable install into the environment failed; trying $SITE with a sitecustomize that reads its .pth"
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index --upgrade --target "$SITE" -e . || return 1
    printf 'import site\nsite.addsitedir("%s")\n' "$SITE" > "$SITE/sitecustomize.py"
}
check_imports() {
    (cd /tmp && "$PY" -c "import arrcoc.data, arrcoc.callbacks, arrcoc.encoder; print('from /tmp:', arrcoc.data.__file__)") &&
    "$PY" -c "import arrcoc.data, arrcoc.callbacks; print('from the repo:', arrcoc.data.__file__)"
}
versions() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    nproc; free -g | head -2
    "$PY" - <<'EOF'
import importlib, importlib.metadata as md, sys
print("python", sys.version.split()[0], sys.executable)
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
for dist in ("lightning", "pytorch-lightning", "torchmetrics", "transformers", "tokenizers", "huggingface-hub",
             "timm", "open_clip_torch", "webdataset", "omegaconf", "jsonargparse", "deepspeed", "pydantic",
             "typing_extensions", "setuptools", "pytest", "pytest-timeout", "pytest-xdist", "numpy", "pillow",
             "triton", "ninja", "arrcoc"):
    try:
        print(f"{dist:18s} {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"{dist:18s} MISSING")
import open_clip, deepspeed, lightning, transformers
from deepspeed.accelerator import get_accelerator
print("imports ok: open_clip", open_clip.__version__, "deepspeed", deepspeed.__version__,
      "accelerator", get_accelerator()._name)
EOF
    # requirement conflicts that touch our packages (the image's own unrelated ones are filtered out)
    "$PY" -m pip check 2>&1 | grep -i -E "arrcoc|open.clip|webdataset|omegaconf|jsonargparse|deepspeed|pydantic|ftfy|typeshed|docstring|hjson|braceexpand|annotated|typing.inspection|wcwidth|typing.extensions" || echo "pip check: nothing about our packages"
}
tiny_encoder() {
    # The tiny preset's `pretrained: shapes` weights ship in arrcoc/presets/; check they are there and load.
    "$PY" - <<'EOF'
from arrcoc.encoder import VisionEncoder
from arrcoc.presets import shapes_checkpoint
path = shapes_checkpoint()
VisionEncoder("arrcoc-tiny-vit", pretrained="shapes")
print(f"tiny encoder shipped: {path} ({path.stat().st_size / 2**20:.1f} MiB), loads through open_clip")
EOF
}
export -f install_wheels install_project check_imports versions tiny_encoder
run_step setup/wheels 180 "$SETUP" install_wheels
run_step setup/project 120 "$SETUP" install_project
run_step setup/imports 120 "$SETUP" check_imports
run_step setup/versions 120 "$SETUP" versions
run_step setup/tiny-encoder 120 "$SETUP" tiny_encoder
grep -E "^tiny encoder" "$SETUP" | sed 's/^/    /' >> "$SUMMARY"
grep -E "^(torch|lightning|transformers|open_clip_torch|deepspeed) |imports ok|NVIDIA|H100|H200" "$SETUP" | sort -u | sed 's/^/    /' >> "$SUMMARY"

# Optional side job started once arrcoc imports (e.g. pretraining runs), waited for at the end.
SIDE_PID=
if [[ -n ${SIDE_JOB:-} ]]; then bash -c "$SIDE_JOB" > "$WORK/side_job.log" 2>&1 & SIDE_PID=$!; note "side job started: $SIDE_JOB"; fi

HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
note "cuda available: $HAS_CUDA"

# Shared by every CLI run: one small sample task (generated once, 8 train shards), the GPU.
DATA=(--data.cache_dir "$WORK/sample-task" --data.sample_task.train 800 --data.sample_task.val 48
      --data.sample_task.samples_per_shard 100 --data.samples_per_epoch 800 --data.eval_batch_size 24)
GPU=(--trainer.accelerator "${ACCEL:-gpu}" --trainer.precision "${PRECISION:-bf16-mixed}")

# ---------------------------------------------------------------------------------------------------- bench
BENCH=$OUT/bench.log
bench_metrics() {
    "$PY" - "$WORK/bench" <<'EOF'
import csv, glob, os, statistics, sys
(path,) = glob.glob(f"{sys.argv[1]}/logs/*/metrics.csv")
rows = list(csv.DictReader(open(path)))
sps = [(int(r["step"]), float(r["perf/samples_per_s"])) for r in rows if r.get("perf/samples_per_s")]
vts = [float(r["perf/visual_tokens_per_s"]) for r in rows if r.get("perf/visual_tokens_per_s")]
steps = max(int(r["step"]) for r in rows if r.get("step")) + 1
print(f"metrics: {path}; {len(sps)} logged points, steps logged up to {steps}")
print("samples/s at logged steps:", ", ".join(f"{s}:{v:.0f}" for s, v in sps))
warm = [v for s, v in sps if s >= 10] or [v for _, v in sps]
print(f"BENCH samples/s (phase 1, {os.environ['BENCH_LABEL']}, batch 16, 4 loader workers, steps >= 10): median {statistics.median(warm):.1f}, "
      f"mean {statistics.mean(warm):.1f}, min {min(warm):.1f}, max {max(warm):.1f}; "
      f"visual tokens/s median {statistics.median(vts):.0f}")
EOF
}
export -f bench_metrics
export BENCH_LABEL="${ACCEL:-gpu} ${PRECISION:-bf16-mixed}"
if run_step bench/phase1-bf16-50steps 150 "$BENCH" arrcoc fit --config configs/phase1.yaml "${GPU[@]}" \
        --trainer.max_steps 50 --trainer.val_check_interval 50 --trainer.limit_val_batches 0 \
        --trainer.log_every_n_steps 2 --trainer.enable_progress_bar false --data.num_workers 4 "${DATA[@]}" \
        --trainer.default_root_dir "$WORK/bench"; then
    run_step bench/metrics 30 "$BENCH" bench_metrics && grep "^BENCH" "$BENCH" | sed 's/^/    /' >> "$SUMMARY"
fi

# ---------------------------------------------------------------------------------------------------- speed
# Still alone on the machine. Issue 12's goals at real shapes: adaptive >= 95% of its ideal ratio, allocation
# <= 3% of the step, the encoder's time gone with cached features.
SPEED=$OUT/speed.log
for shape in 1.5b 7b; do
    if run_step "speed/$shape" 170 "$SPEED" arrcoc bench speed --shapes "$shape" --device cuda --batch-size 16 \
            --repeats 6 --warmup 2 --out "$WORK/speed-$shape"; then
        cat "$WORK/speed-$shape/speed.md" >> "$SPEED"
        grep -E "^\| (full|fixed@198|adaptive@198) " "$WORK/speed-$shape/speed.md" | head -4 | sed "s/^/    $shape /" >> "$SUMMARY"
    fi
done
ATTN=(); if "$PY" -c "import flash_attn" 2>/dev/null; then ATTN=(--attn flash_attention_2); fi
run_step speed/packing 90 "$SPEED" "$PY" scripts/packing_bench.py --device cuda --repeats 11 "${ATTN[@]}" \
    --overheads 64,256

# ---------------------------------------------------------------------------------------------------- whole suite
# In the background from here on (the bench above had the machine to itself): the CUDA tests and the DeepSpeed
# chain below run beside it. Each xdist worker gets 2 CPU threads, not all 16.
ALL_LOG=$OUT/pytest_all.log
XDIST=()
if "$PY" -c "import xdist" 2>/dev/null; then XDIST=(-n "$XDIST_N"); fi
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} run_step pytest_all 600 "$ALL_LOG" "$PY" -m pytest -v -rfEs -p no:cacheprovider \
    "${XDIST[@]}" --timeout 600 --durations=15 ${PYTEST_SELECT:-} &
ALL_PID=$!

# ---------------------------------------------------------------------------------------------------- CUDA tests
CUDA_LOG=$OUT/pytest_cuda.log
if run_step cuda_tests 180 "$CUDA_LOG" "$PY" -m pytest -x -q -rs -p no:cacheprovider tests/test_callbacks.py; [[ -f $CUDA_LOG ]]
then
    grep -E "passed|failed|SKIPPED|error" "$CUDA_LOG" | tail -3 | sed 's/^/    /' >> "$SUMMARY"
    if grep -q "SKIPPED.*needs CUDA" "$CUDA_LOG"; then note "FAIL    cuda_tests: the CUDA-only ZeRO test was skipped"; fi
fi

# ---------------------------------------------------------------------------------------------------- DeepSpeed
DS_LOG=$OUT/deepspeed.log
SHORT=(--trainer.val_check_interval 10 --trainer.log_every_n_steps 5 --trainer.enable_progress_bar false
       --data.num_workers 2 "${DATA[@]}")
check_consolidated() {
    "$PY" - "$WORK/p3/checkpoints" <<'EOF'
import os, sys, torch
d = sys.argv[1]
print("checkpoint dir:", sorted(os.listdir(d)))
f = os.path.join(d, "consolidated.pt")
ok = True
try:  # as init_from (arrcoc.phases.base.load_weights) reads it
    blob = torch.load(f, map_location="cpu", weights_only=True)
except Exception as err:
    ok = False
    print("consolidated.pt: torch.load(weights_only=True) FAILED, as init_from would:", repr(err)[:1500])
    blob = torch.load(f, map_location="cpu", weights_only=False)
state = blob["state_dict"]
print(f"consolidated.pt: {os.path.getsize(f) / 2**20:.1f} MiB, top-level keys {sorted(blob)}, {len(state)} tensors,",
      "dtypes", sorted({str(v.dtype) for v in state.values()}), "encoder keys:",
      sum(k.startswith("model.encoder.") for k in state), "sample keys:", sorted(state)[:3])
sys.exit(0 if ok else 1)
EOF
}
check_init_from_log() {
    # (no `tee /dev/stderr` here: with stderr appended to $DS_LOG, reopening it would truncate the log)
    local line; line=$(grep -E "init_from .*consolidated.pt" "$DS_LOG" | tail -1)
    echo "init_from report: ${line:-none}"
    # the frozen weights are added back at consolidation: the whole model loads, not only what phase 3 trained
    [[ $line == *"scorers loaded"* && $line == *"projector loaded"* && $line == *"encoder loaded"* &&
       $line == *"llm loaded"* ]]
}
export DS_LOG
export -f check_consolidated check_init_from_log
run_step deepspeed/phase1 150 "$DS_LOG" arrcoc fit --config configs/phase1.yaml "${GPU[@]}" "${SHORT[@]}" \
    --trainer.max_steps 10 --trainer.default_root_dir "$WORK/p1" &&
run_step deepspeed/phase2 150 "$DS_LOG" arrcoc fit --config configs/phase2.yaml "${GPU[@]}" "${SHORT[@]}" \
    --trainer.max_steps 10 --trainer.default_root_dir "$WORK/p2" \
    --model.init_args.init_from "$WORK/p1/checkpoints/last.ckpt" &&
run_step deepspeed/phase3-zero2 180 "$DS_LOG" arrcoc fit --config configs/phase3.yaml \
    --config configs/presets/deepspeed.yaml "${SHORT[@]}" --trainer.max_steps 20 --trainer.val_check_interval 20 \
    --trainer.default_root_dir "$WORK/p3" --model.init_args.init_from "$WORK/p2/checkpoints/last.ckpt" &&
run_step deepspeed/consolidated 60 "$DS_LOG" check_consolidated &&
run_step deepspeed/resume-zero2 180 "$DS_LOG" arrcoc fit --config configs/phase3.yaml \
    --config configs/presets/deepspeed.yaml "${SHORT[@]}" --trainer.max_steps 24 --trainer.val_check_interval 24 \
    --trainer.default_root_dir "$WORK/p3" --model.init_args.init_from "$WORK/p2/checkpoints/last.ckpt" \
    --ckpt_path "$WORK/p3/checkpoints/last.ckpt" &&
run_step deepspeed/init_from-validate 150 "$DS_LOG" arrcoc validate --config configs/phase3.yaml "${GPU[@]}" \
    "${SHORT[@]}" --trainer.default_root_dir "$WORK/p3-validate" \
    --model.init_args.init_from "$WORK/p3/checkpoints/consolidated.pt" &&
run_step deepspeed/init_from-report 10 "$DS_LOG" check_init_from_log
# Issue 14: the same phase 3 under ZeRO-3, and with LoRA adapters under ZeRO-2 (each: a few steps, consolidated,
# resumed, predict); one line each in the summary.
for variant in zero3 lora; do
    if [[ $variant == zero3 ]]; then LAYERS=(--config configs/deepspeed/zero3.yaml); else
        LAYERS=(--config configs/deepspeed/zero2.yaml --config configs/presets/lora.yaml); fi
    D=$WORK/p3-$variant
    run_step "deepspeed/$variant" 150 "$DS_LOG" arrcoc fit --config configs/phase3.yaml "${LAYERS[@]}" "${SHORT[@]}" \
        --trainer.max_steps 10 --trainer.default_root_dir "$D" \
        --model.init_args.init_from "$WORK/p2/checkpoints/last.ckpt" &&
    run_step "deepspeed/$variant-resume" 150 "$DS_LOG" arrcoc fit --config configs/phase3.yaml "${LAYERS[@]}" \
        "${SHORT[@]}" --trainer.max_steps 14 --trainer.default_root_dir "$D" \
        --model.init_args.init_from "$WORK/p2/checkpoints/last.ckpt" --ckpt_path "$D/checkpoints/last.ckpt" &&
    run_step "deepspeed/$variant-predict" 120 "$DS_LOG" arrcoc predict --config configs/phase3.yaml "${GPU[@]}" \
        "${SHORT[@]}" $( [[ $variant == lora ]] && echo --config configs/presets/lora.yaml ) \
        --trainer.default_root_dir "$D-predict" --model.init_args.init_from "$D/checkpoints/consolidated.pt" &&
    note "    $variant: trained 10, resumed to 14, consolidated and predicted ($(wc -l < "$D-predict/predictions.jsonl" 2>/dev/null || echo 0) predictions)"
done
grep -E "ZeRO stage|consolidated .* ->|consolidated.pt:|init_from .*consolidated" "$DS_LOG" | grep -v "^INFO:" |
    sed 's/^/    /' >> "$SUMMARY"

wait "$ALL_PID"
if [[ -n $SIDE_PID ]]; then wait "$SIDE_PID"; note "side job ended rc=$? ($(tail -c 300 "$WORK/side_job.log" | tr "\n" " "))"; fi
[[ -f $ALL_LOG ]] && tail -n 100 "$ALL_LOG" | grep -E "^(FAILED|ERROR) |^=+ .*(passed|failed|errors?|skipped)" |
    sed 's/^/    /' >> "$SUMMARY"

note "total $(( $(date +%s) - T0 ))s"
echo "steps failed or timed out: $(grep -c -E '^(FAIL|TIMEOUT)' "$SUMMARY")" >> "$SUMMARY"
echo; echo "=============== $SUMMARY"; cat "$SUMMARY"
exit 0
