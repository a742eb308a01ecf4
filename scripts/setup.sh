#!/usr/bin/env bash
# Idempotent set-up: a venv in .venv with torch, torchvision, trainkit and its dev tools, and
# Debian's Fashion-MNIST when apt and root are available. Seconds when already done.
# Usage: scripts/setup.sh        (scripts/train and scripts/test call it for you)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")  # the builds this machine class carries on disk
FMNIST_DIR=/usr/share/datasets/fashion-mnist

if [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's dataset-fashion-mnist" >&2
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; })
  else
    echo "setup: no root/apt here: put the Fashion-MNIST .gz files under data.root yourself" >&2
  fi
fi

# The stamp records what was installed; a changed pyproject.toml or pin re-runs pip.
stamp=.venv/.trainkit-setup
want="$(sha256sum pyproject.toml | cut -c1-16) ${TORCH_PINS[*]}"
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
echo "setup: installing into .venv (about 2 minutes the first time)" >&2
.venv/bin/python -m pip install -q --disable-pip-version-check "${TORCH_PINS[@]}" 2>&1 |
  grep -v "is ignored: it is neither" >&2 || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 |
  grep -v "is ignored: it is neither" >&2 || true
.venv/bin/python -c "import torch, torchvision, trainkit" # fail here, not later, if pip did
echo "$want" > "$stamp"
