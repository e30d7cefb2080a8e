#!/usr/bin/env bash
# Screenshots of every panel, under Xvfb with Mesa's software GL (llvmpipe).
#
#   app/scripts/screenshots.sh [MODEL] [PROMPT] [SUBJECT] [TARGET]
#
# MODEL defaults to the demo model. Needs: xvfb xauth x11-apps imagemagick
# (Debian: apt install xvfb xauth x11-apps imagemagick mesa-utils xdotool).
# PNGs go to $OUT (default target/screenshots). Look at them.
#
# APP_ARGS adds arguments to every start (APP_ARGS="--device wgpu:cpu").
# The Runs panel: RUNS="ID [COMPARE_ID]; ID ..." (with ENGRAM_RUNS naming the
# store) shoots the panel with each run open, compared with the second id.
set -euo pipefail
cd "$(dirname "$0")/../.."

MODEL=${1:-demo}
PROMPT=${2:-Quinford Belvale lives in the city of}
SUBJECT=${3:-Quinford Belvale}
TARGET=${4:-Quarnholm}
OUT=${OUT:-target/screenshots}
WAIT=${WAIT:-4}
NAME=${NAME:-$(basename "$MODEL" .gguf)}
CONVERT=/usr/bin/convert
[ -x "$CONVERT" ] || CONVERT=convert
mkdir -p "$OUT"

if [ -z "${BIN:-}" ]; then
  cargo build --release -p engram-app
  BIN=${CARGO_TARGET_DIR:-target}/release/engram-app
fi

DISPLAY_NUM=${DISPLAY_NUM:-97}
Xvfb ":$DISPLAY_NUM" -screen 0 1280x800x24 -nolisten tcp &
XVFB=$!
trap 'kill $XVFB 2>/dev/null || true; wait $XVFB 2>/dev/null || true' EXIT
export DISPLAY=":$DISPLAY_NUM" LIBGL_ALWAYS_SOFTWARE=1
sleep 1

shoot() { # panel, file, extra args...
  local panel=$1 file=$2 open=$1
  shift 2
  # edit-batch: the Edit panel with "Run MEMIT" pressed on its default batch;
  # steer: the Playground scrolled to its Steer section, "Apply steering" pressed.
  [ "$panel" = edit-batch ] && open=edit
  [ "$panel" = steer ] && open=playground
  [ "$panel" = patch ] && open=locate
  "$BIN" --no-settings --model "$MODEL" --panel "$open" --prompt "$PROMPT" \
    --subject "$SUBJECT" --target "$TARGET" --theme "${THEME:-dark}" ${APP_ARGS:-} "$@" &
  local app=$!
  sleep "$WAIT"
  if [ "$panel" = playground ] && command -v xdotool >/dev/null; then
    # Press Generate: the button sits below the next-token table.
    local win
    win=$(xdotool search --name '^Engram$' | head -1)
    if [ -n "$win" ]; then
      xdotool mousemove --window "$win" "${GEN_X:-192}" "${GEN_Y:-597}" click 1 || true
      sleep "$WAIT"
    fi
  fi
  if [ "$panel" = locate ] && command -v xdotool >/dev/null; then
    local win
    win=$(xdotool search --name '^Engram$' | head -1)
    if [ -n "$win" ]; then
      xdotool mousemove --window "$win" 181 223 click 1 || true
      sleep "${TRACE_WAIT:-$WAIT}"
    fi
  fi
  if [ "$panel" = patch ] && command -v xdotool >/dev/null; then
    # Open "Activation patching" below the trace form, then press Patch
    # (exact and attribution patching side by side).
    local win
    win=$(xdotool search --name '^Engram$' | head -1)
    if [ -n "$win" ]; then
      xdotool mousemove --window "$win" "${PATCH_HDR_X:-230}" "${PATCH_HDR_Y:-250}" click 1 || true
      sleep 1
      xdotool mousemove --window "$win" "${PATCH_X:-560}" "${PATCH_Y:-277}" click 1 || true
      sleep "${PATCH_WAIT:-$WAIT}"
    fi
  fi
  if [ "$panel" = probe ] && command -v xdotool >/dev/null; then
    # Press "Run probe" on the demo relation set.
    local win
    win=$(xdotool search --name '^Engram$' | head -1)
    if [ -n "$win" ]; then
      xdotool mousemove --window "$win" "${PROBE_X:-196}" "${PROBE_Y:-303}" click 1 || true
      sleep "${PROBE_WAIT:-$WAIT}"
    fi
  fi
  if [ "$panel" = edit ] && command -v xdotool >/dev/null; then
    # Press "Apply edit" on the default demo form.
    local win
    win=$(xdotool search --name '^Engram$' | head -1)
    if [ -n "$win" ]; then
      xdotool mousemove --window "$win" "${EDIT_X:-357}" "${EDIT_Y:-453}" click 1 || true
      sleep "${EDIT_WAIT:-$WAIT}"
    fi
  fi
  if [ "$panel" = edit-batch ] && command -v xdotool >/dev/null; then
    local win
    win=$(xdotool search --name '^Engram$' | head -1)
    if [ -n "$win" ]; then
      xdotool mousemove --window "$win" "${MEMIT_X:-216}" "${MEMIT_Y:-684}" click 1 || true
      sleep "${EDIT_WAIT:-$WAIT}"
    fi
  fi
  if [ "$panel" = steer ] && command -v xdotool >/dev/null; then
    local win
    win=$(xdotool search --name '^Engram$' | head -1)
    if [ -n "$win" ]; then
      xdotool mousemove --window "$win" 700 500 click --repeat 20 5 || true
      sleep 1
      xdotool mousemove --window "$win" "${STEER_X:-226}" "${STEER_Y:-756}" click 1 || true
      sleep "${EDIT_WAIT:-$WAIT}"
      # The two continuations appear below the button.
      xdotool mousemove --window "$win" 700 500 click --repeat 20 5 || true
      sleep 1
    fi
  fi
  if [ "$panel" = runs ] && [ -n "${RUNS_EXPORT:-}" ] && command -v xdotool >/dev/null; then
    # Press Export (the form under an open run's table).
    local win
    win=$(xdotool search --name '^Engram$' | head -1)
    if [ -n "$win" ]; then
      xdotool mousemove --window "$win" "${EXPORT_X:-728}" "${EXPORT_Y:-691}" click 1 || true
      sleep 2
    fi
  fi
  xwd -root -silent | "$CONVERT" xwd:- "$OUT/$file"
  kill "$app" 2>/dev/null || true
  wait "$app" 2>/dev/null || true
  echo "$OUT/$file"
}

if [ -n "${RUNS:-}" ]; then
  IFS=';' read -ra SHOTS <<<"$RUNS"
  for shot in "${SHOTS[@]}"; do
    read -ra ids <<<"$shot"
    extra=(--run "${ids[0]}")
    [ "${#ids[@]}" -gt 1 ] && extra+=(--compare "${ids[1]}")
    shoot runs "runs-${ids[0]}.png" "${extra[@]}"
  done
  exit 0
fi

PANELS=${PANELS:-model playground lens attention facts locate memories probe edit edit-batch}
FACTS=${FACTS:-datasets/demo/facts.jsonl}
for panel in $PANELS; do
  if [ "$panel" = facts ]; then
    WAIT=${FACTS_WAIT:-$WAIT} shoot facts "$NAME-facts.png" --facts "$FACTS"
  else
    shoot "$panel" "$NAME-$panel.png"
  fi
done
