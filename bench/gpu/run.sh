#!/usr/bin/env bash
# Every GPU figure of issue 25 in one call, within a time budget:
#
#   bench/gpu/run.sh [--dry-run] [--device cuda:0] [--budget SECONDS]
#
# On the GPU machine (no Rust, no network; binaries and data carried in
# gpu-carry/, made by bench/gpu/prepare.sh):
#   (a) a smoke run of the CLI on the device (the tiny GPT-2 fixture): where it
#       fails, nothing else is tried, and the run ends within seconds;
#   (b) the CUDA parity tests (f32 1e-4; bf16 0.1, in its own process);
#   (c) GPT-2-XL-shaped random weights, written once with torch, and
#       `engram bench forward` against HF eager on that shape, f32 and bf16;
#   (d) a causal trace (10 samples, window 10; also --naive), a ROME edit and
#       a MEMIT batch of 100 on it;
#   (e) every figure into $OUT as JSON or text, $OUT/summary.md, the end of
#       each step's stderr on stdout, and all outputs in $OUT/results.tar.gz
#       (the device tool brings back 8 files at most).
# Each step gets what is left of the budget (default 480 s) and is skipped
# when too little is left; the script always ends with the summary.
#
# --dry-run does the same on the CPU (or --device wgpu:cpu) with the tiny
# GPT-2 fixture and small sizes, without torch where it is missing: CI runs
# it so that this script cannot rot.
set -uo pipefail
cd "$(dirname "$0")/../.."

DRY=0 DEVICE=cuda:0 BUDGET=480
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1; DEVICE=cpu ;;
    --device) DEVICE=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    *) echo "unknown argument $1 (use --dry-run, --device D, --budget SECONDS)" >&2; exit 2 ;;
  esac
  shift
done
[ "$DRY" = 1 ] && case $DEVICE in cpu|wgpu*) ;; *) DEVICE=cpu ;; esac

first() { for p in "$@"; do [ -e "$p" ] && { echo "$p"; return; }; done; echo "$1"; }
WORK=${WORK:-/tmp/engram-gpu}
mkdir -p "$WORK/bin"
# prepare.sh carries the binaries xz-compressed: unpack them (xz, else Python's lzma).
for f in gpu-carry/bin/*.xz; do
  [ -e "$f" ] || continue
  b="$WORK/bin/$(basename "$f" .xz)"
  [ -x "$b" ] && continue
  if command -v xz >/dev/null; then xz -dc "$f" >"$b"; else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "$b"
  fi
  chmod +x "$b"
done
ENGRAM=${ENGRAM:-$(first "$WORK/bin/engram" "${CARGO_TARGET_DIR:-target}/release/engram" "${CARGO_TARGET_DIR:-target}/debug/engram")}
TESTS=${MODEL_TESTS:-$WORK/bin/model-tests}
SHARED=${SHARED:-$(first gpu-carry/shared ../shared)}
OUT=${OUT:-target/gpu-out}
mkdir -p "$OUT"
export ENGRAM_RUNS="$WORK/runs" ENGRAM_SHARED="$SHARED" XDG_CACHE_HOME="$WORK/cache"
# The CUDA toolkit and its libraries, where the machine keeps them: cubecl
# compiles kernels with NVRTC (loaded at run time, as libnvrtc.so*) and
# includes the toolkit's headers from $CUDA_PATH (default /usr/local/cuda).
if [ "${DEVICE%%:*}" = cuda ]; then
  if [ -z "${CUDA_PATH:-}" ] && [ ! -d /usr/local/cuda/include ]; then
    nv=$(command -v nvcc || true)
    [ -n "$nv" ] && export CUDA_PATH=$(dirname "$(dirname "$(readlink -f "$nv")")")
  fi
  libs=""
  for d in "${CUDA_PATH:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64 /usr/local/nvidia/lib64 \
    $(python3 -c 'import glob, site; [print(d) for s in site.getsitepackages() for d in glob.glob(s + "/nvidia/*/lib")]' 2>/dev/null); do
    ls "$d"/libnvrtc.so* >/dev/null 2>&1 && libs="$libs:$d"
  done
  ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so' || export LD_LIBRARY_PATH="${libs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  {
    echo "CUDA_PATH=${CUDA_PATH:-unset (cubecl takes /usr/local/cuda)}"
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    echo "folders with libnvrtc: ${libs#:}"
    ldconfig -p 2>/dev/null | grep -E 'libnvrtc|libcuda\.' || echo "ldconfig: no libnvrtc or libcuda"
    nvcc --version 2>&1 | tail -2
    nvidia-smi 2>&1 | head -15
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(), "transformers", transformers.__version__)' 2>&1
    nproc; free -g | head -2
  } >"$OUT/env.txt" 2>&1
fi
START=$(date +%s)
SUMMARY="$OUT/summary.md"
{
  echo "# GPU run $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "- engram: $("$ENGRAM" --version 2>&1)"
  echo "- device: $DEVICE$([ "$DRY" = 1 ] && echo ' (dry run: tiny GPT-2 fixture, small sizes)')"
  command -v nvidia-smi >/dev/null && echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
  echo
  echo "| step | status | seconds | output |"
  echo "| --- | --- | --- | --- |"
} >"$SUMMARY"

left() { echo $((START + BUDGET - $(date +%s))); }
# step NAME MIN_SECONDS OUTFILE COMMAND...: run within what is left, note it in the summary.
step() {
  local name=$1 min=$2 out=$3
  shift 3
  local rest
  rest=$(left)
  if [ "$rest" -lt "$min" ]; then
    echo "| $name | skipped: ${rest} s left, needs $min | 0 | |" >>"$SUMMARY"
    return 0
  fi
  local t0 rc
  t0=$(date +%s)
  echo "== $name ($rest s left)" >&2
  timeout --kill-after=5 "$rest" "$@" >"$OUT/$out" 2>"$OUT/$out.err"
  rc=$?
  local status=ok
  [ $rc -eq 124 ] && status="stopped at the budget"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="failed (exit $rc; see $out.err)"
  echo "| $name | $status | $(($(date +%s) - t0)) | $out |" >>"$SUMMARY"
  return $rc
}

# The summary's end, the end of each step's stderr, and one archive of the outputs.
finish() {
  echo >>"$SUMMARY"
  echo "total $(($(date +%s) - START)) s of a $BUDGET s budget" >>"$SUMMARY"
  # What each step printed on stderr, the end of it (the device tool returns the output's tail).
  for f in "$OUT"/*.err; do
    [ -s "$f" ] && { echo "---- $(basename "$f")"; grep -v 'XDG_RUNTIME_DIR' "$f" | tail -n 8; }
  done
  # The device tool brings back 8 files at most: everything but the summary goes in one archive.
  (cd "$OUT" && ls | grep -vx -e summary.md -e results.tar.gz >.files &&
    tar czf results.tar.gz -T .files && xargs rm -f <.files; rm -f .files)
  cat "$SUMMARY"
}

# (a) Can the CLI run on the device at all? If not, stop here: nothing below would.
if ! step "smoke: engram run on $DEVICE (tiny GPT-2)" 20 smoke.txt \
  "$ENGRAM" run "$SHARED/fixtures/tiny/gpt2" --prompt "The Eiffel Tower is located in" --top-k 3 --device "$DEVICE"; then
  echo "| the rest | not run: the CLI failed on $DEVICE (smoke.txt.err) | 0 | |" >>"$SUMMARY"
  finish
  exit 1
fi

# (b) Parity against HF on the tiny fixtures.
if [ -x "$TESTS" ]; then
  # The CUDA or wgpu parity tests, or on the CPU the HF parity tests.
  filter=${DEVICE%%:*}
  [ "$filter" = cpu ] && filter=parity::
  step "parity tests ($DEVICE)" 30 parity.txt "$TESTS" --include-ignored --nocapture "$filter"
  # A test that found no driver skips (and passes): say so.
  grep -q '^SKIP' "$OUT/parity.txt" "$OUT/parity.txt.err" 2>/dev/null &&
    echo "| parity tests | SKIPPED inside: $(grep -h '^SKIP' "$OUT/parity.txt" "$OUT/parity.txt.err" | head -1) | 0 | |" >>"$SUMMARY"
else
  echo "| parity tests | skipped: no test binary at $TESTS (bench/gpu/prepare.sh makes it) | 0 | |" >>"$SUMMARY"
fi

# (c) The model: GPT-2 XL's shape with random weights (the tiny fixture in a dry run).
if [ "$DRY" = 1 ]; then
  MODEL="$SHARED/fixtures/tiny/gpt2" HP=demo SAMPLES=2 WINDOW=2 N=4 STATS=2000 ITERS=1 GEN=4
  PROMPT="The Eiffel Tower is located in the city of" SUBJECT="The Eiffel Tower" TARGET=Rome
else
  MODEL="$WORK/gpt2-xl-random" HP=gpt2-xl SAMPLES=10 WINDOW=10 N=100 STATS=100000 ITERS=5 GEN=32
  PROMPT="The Eiffel Tower is located in the city of" SUBJECT="The Eiffel Tower" TARGET=Rome
  [ -f "$MODEL/model.safetensors" ] || step "write random GPT-2 XL (torch)" 60 write-model.txt \
    python3 bench/torch_forward.py --write-random-gpt2-xl "$MODEL" --tokenizer-from "$SHARED/tokenizers/gpt2"
fi

# Forward against HF eager, f32 and bf16 (f16 on wgpu).
for dtype in f32 bf16; do
  [ "${DEVICE%%:*}" = cpu ] && [ "$dtype" != f32 ] && continue
  [ "${DEVICE%%:*}" = wgpu ] && [ "$dtype" = bf16 ] && dtype=f16
  if python3 -c 'import torch, transformers' 2>/dev/null && [ "${DEVICE%%:*}" != wgpu ]; then
    tdev=${DEVICE%%:*}
    step "forward $dtype vs HF eager" 60 "forward-$dtype.txt" \
      python3 bench/torch_forward.py "$MODEL" --engram "$ENGRAM" --device "$tdev" --dtype "$dtype" \
      --iters "$ITERS" --gen-tokens "$GEN" --json-out "$OUT/forward-$dtype.json"
  else
    step "forward $dtype (HF eager: not measured, no torch)" 30 "forward-$dtype.json" \
      "$ENGRAM" bench forward "$MODEL" --device "$DEVICE" --dtype "$dtype" --iters "$ITERS" --gen-tokens "$GEN" --json
  fi
done

# (d) Trace, ROME edit, MEMIT batch.
step "causal trace (samples $SAMPLES, window $WINDOW, with --naive)" 60 trace.json \
  "$ENGRAM" bench trace "$MODEL" --prompt "$PROMPT" --subject "$SUBJECT" --target "$TARGET" \
  --samples "$SAMPLES" --window "$WINDOW" --naive --device "$DEVICE" --json
step "ROME edit ($STATS statistics tokens)" 60 edit.txt \
  "$ENGRAM" bench edit "$MODEL" --prompt "$PROMPT" --subject "$SUBJECT" --target "$TARGET" \
  --hparams "$HP" --corpus "$SHARED/datasets/wikitext-2/valid.txt" --stats-tokens "$STATS" --device "$DEVICE"
step "MEMIT batch of $N" 60 memit.txt \
  "$ENGRAM" bench memit "$MODEL" --data "$SHARED/datasets/counterfact-val.json" --n "$N" \
  --hparams "$HP" --corpus "$SHARED/datasets/wikitext-2/valid.txt" --stats-tokens "$STATS" --device "$DEVICE"

finish
# The run failed if a step failed (not if it was skipped or stopped at the budget).
! grep -q "| failed" "$SUMMARY"
