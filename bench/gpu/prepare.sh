#!/usr/bin/env bash
# Here, before a GPU session: everything bench/gpu/run.sh needs on a machine
# without Rust or network, in gpu-carry/ (ignored by git; carry it whole).
#   gpu-carry/bin/engram.xz       the CLI, release, --features cuda, stripped, xz
#   gpu-carry/bin/model-tests.xz  the model crate's tests (CUDA parity), likewise
#   gpu-carry/shared/          the tiny fixtures, the GPT-2 tokenizer, WikiText-2 valid, CounterFact val
# Prints the sizes (the device tool carries 64 MiB in all) and the build time.
set -euo pipefail
cd "$(dirname "$0")/../.."
FEATURES=${FEATURES:-cuda}
T=${CARGO_TARGET_DIR:-target}
grep -qx '/gpu-carry/' .git/info/exclude 2>/dev/null || echo '/gpu-carry/' >>.git/info/exclude
t0=$(date +%s)
cargo build --release --workspace --bins --features "$FEATURES"
tests=$(cargo test --release --workspace --features "$FEATURES" --test model --no-run --message-format json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "model" and m.get("executable"):
        print(m["executable"])' | tail -1)
echo "build: $(($(date +%s) - t0)) s (features $FEATURES)"
rm -rf gpu-carry && mkdir -p gpu-carry/bin gpu-carry/shared/datasets/wikitext-2 gpu-carry/shared/fixtures gpu-carry/shared/tokenizers
strip -o gpu-carry/bin/engram "$T/release/engram"
strip -o gpu-carry/bin/model-tests "$tests"
du -b gpu-carry/bin/* | awk '{ printf "%-28s %6.1f MiB stripped\n", $2, $1 / 1048576 }'
# Stripped, the CLI alone is over the 64 MiB carry; xz takes it to about a sixth.
xz -T0 -9 gpu-carry/bin/engram gpu-carry/bin/model-tests
S=${SHARED:-../shared}
cp -r "$S/fixtures/tiny" gpu-carry/shared/fixtures/
cp -r "$S/tokenizers/gpt2" gpu-carry/shared/tokenizers/
cp "$S/datasets/wikitext-2/valid.txt" gpu-carry/shared/datasets/wikitext-2/
cp "$S/datasets/counterfact-val.json" gpu-carry/shared/datasets/
du -b gpu-carry/bin/* | awk '{ printf "%-28s %6.1f MiB\n", $2, $1 / 1048576 }'
du -sb gpu-carry | awk '{ printf "gpu-carry in all: %.1f MiB (limit 64 MiB)\n", $1 / 1048576 }'
