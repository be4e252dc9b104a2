#!/usr/bin/env bash
# Set-up for a fresh Debian machine (run it, or source it as run.sh and test.sh do): installs the Debian
# packages the project uses (when missing), creates .venv and installs the project with its cpu, train and dev
# extras.
# Idempotent: a second run checks and returns in about a second.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${INPAINT_OSC_VENV:-$ROOT/.venv}"
DEBIAN_PACKAGES=(fluidsynth timgm6mb-soundfont fluid-soundfont-gm liblo-tools puredata-core libportaudio2)
# shellcheck disable=SC2206  # callers that need more (scripts/train_default.sh: its soundfonts) list them here
DEBIAN_PACKAGES+=(${EXTRA_DEBIAN_PACKAGES:-})

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
  if [ "$SUDO" = none ] || ! command -v apt-get >/dev/null; then
    echo "inpaint-osc needs these Debian packages: ${missing[*]}" >&2
    echo "install them with:  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  echo "installing Debian packages: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "inpaint-osc needs Python 3.10+" >&2; exit 1; }
  "$PYTHON" -m venv "$VENV"
fi
# Reinstall only when pyproject.toml changed. torch is pinned there (an unpinned torch pulls GBs of CUDA).
stamp="$VENV/.stamp-$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2 || true
  "$VENV/bin/python" -m pip install -q -e "$ROOT[cpu,train,dev]" >&2
  rm -f "$VENV"/.stamp-*
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
