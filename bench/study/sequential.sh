#!/usr/bin/env bash
# The sequential-editing study (issue 22): SmolLM2-135M, CounterFact-val, 500
# edits, FT-L / ROME / r-ROME one at a time and MEMIT / AlphaEdit in batches of
# 100, every case edited so far scored again after each 100 edits.
#
#   bench/study/sequential.sh [METHOD ...]      (default: all five, one after another)
#
# ENGRAM: the engram binary (default: target/release/engram). OUT: where the
# journals, z caches and the run store go (default: study/). Each method
# journals as it goes; run the same command again to resume. Methods may run
# as separate processes at once (each its own journal), e.g. one per core:
#   RAYON_NUM_THREADS=1 bench/study/sequential.sh rome &
#   RAYON_NUM_THREADS=1 bench/study/sequential.sh r-rome &
# Then draw all five on one figure per metric:
#   engram runs curve ID... --runs study/runs --out figures \
#     --metrics ES,PS,NS,S,drift_relative,delta_fro
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
shared=${ENGRAM_SHARED:-$root/../shared}
model=$shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
engram=${ENGRAM:-$root/target/release/engram}
out=${OUT:-$root/study}
mkdir -p "$out"
common=(eval counterfact "$model" --data "$shared/datasets/counterfact-val.json" --n 500
        --sequential --distinct-subjects --fluency-tokens 0
        --checkpoints 100,200,300,400,500
        --corpus "$shared/datasets/wikitext-2/valid.txt" --runs "$out/runs")
methods=("$@")
[ ${#methods[@]} -gt 0 ] || methods=(memit alphaedit ft-l r-rome rome)
for method in "${methods[@]}"; do
  case $method in
    memit|alphaedit) extra=(--batch 100 --z-cache "$out/$method-z.jsonl");;
    rome|r-rome|ft-l) extra=();;
    *) echo "unknown method $method (memit, alphaedit, ft-l, r-rome, rome)" >&2; exit 2;;
  esac
  echo "== $method $(date -u +%FT%TZ)"
  "$engram" "${common[@]}" --method "$method" --journal "$out/$method.jsonl" "${extra[@]}"
done
