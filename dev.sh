#!/usr/bin/env bash
# rayagg's one entry point for a fresh machine (only Python 3.10+ needed):
#   ./dev.sh demo            set up, then train the demo tree on a local Ray
#   ./dev.sh test [ARGS]     set up, then run the test suite (or pytest ARGS)
#   ./dev.sh setup           data + virtual environment only
# RAYAGG_VENV picks the virtual environment (default .venv).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${RAYAGG_VENV:-.venv}
FMNIST=/usr/share/datasets/fashion-mnist

say() { echo "dev.sh: $*" >&2; }

can_apt() { command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; }

apt_install() {
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
  $sudo apt-get install -y -q "$@" >/dev/null 2>&1 ||
    { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "$@" >/dev/null; }
}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" 2>/dev/null || {
      can_apt || { say "python3 -m venv failed; install python3-venv"; exit 1; }
      say "installing python3-venv"; apt_install python3-venv; python3 -m venv "$VENV"; }
  fi
  local stamp="$VENV/.rayagg-setup" want
  want=$(cat setup.py | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing torch, ray and rayagg into $VENV (a few minutes the first time)"
    # The torch release this project is tested with; on this project's machines it
    # installs from local disk. pip's chatter goes to a log shown only on failure.
    local log="$VENV/pip.log"
    { "$VENV/bin/pip" install --upgrade pip &&
      "$VENV/bin/pip" install torch==2.14.1 torchvision==0.29.1 &&
      "$VENV/bin/pip" install -e ".[test]"; } > "$log" 2>&1 || { cat "$log"; say "install failed"; exit 1; }
    echo "$want" > "$stamp"
  fi
}

ensure_data() {
  # Fashion-MNIST, the offline default: Debian's package where apt is usable, else a
  # torchvision download into ~/.cache/rayagg/data (needs network).
  [ -e "$FMNIST/train-images-idx3-ubyte.gz" ] && return
  if can_apt && apt_install dataset-fashion-mnist; then say "installed dataset-fashion-mnist"; return; fi
  say "apt unavailable: downloading Fashion-MNIST with torchvision"
  "$VENV/bin/python" -c "from rayagg.learning.data import load_dataset; load_dataset('fashion-mnist', download=True)"
}

case "${1:-}" in
  setup) ensure_venv; ensure_data ;;
  demo) ensure_venv; ensure_data; shift
        exec "$VENV/bin/rayagg" run jobs/configs/demo.yaml --out runs/demo "$@" ;;
  test) ensure_venv; ensure_data; shift
        # ARGS go to pytest (its testpaths default to tests/): ./dev.sh test -m "not ray",
        # ./dev.sh test tests/test_tree.py
        exec "$VENV/bin/python" -m pytest -q "$@" ;;
  *) sed -n '2,6p' "$0"; exit 2 ;;
esac
