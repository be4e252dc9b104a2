#!/usr/bin/env bash
# Set-up for a fresh Debian machine (run it, or source it as run.sh and test.sh do): installs the Debian
# packages the project uses (when missing), creates .venv and installs the project with its extras:
# INPAINT_OSC_EXTRAS (default cpu,train,dev: everything, for the tests and training; run.sh asks for `cpu`, the
# torch-free runtime alone) and the Debian packages in INPAINT_OSC_DEBIAN (default: all the project uses).
# Idempotent: a second run checks and returns in about a second.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${INPAINT_OSC_VENV:-$ROOT/.venv}"
EXTRAS="${INPAINT_OSC_EXTRAS:-cpu,train,dev}"
# shellcheck disable=SC2206  # a word list
DEBIAN_PACKAGES=(${INPAINT_OSC_DEBIAN:-fluidsynth timgm6mb-soundfont fluid-soundfont-gm liblo-tools puredata-core libportaudio2 jackd2})
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
# Reinstall only when pyproject.toml changed or extras are asked for that no install of it covered.
# torch is pinned there (an unpinned torch pulls GBs of CUDA).
hash="$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"
covered() {  # is every extra in $EXTRAS in an install stamped for this pyproject.toml?
  local stamp extra
  for stamp in "$VENV"/.stamp-"$hash"-*; do
    [ -f "$stamp" ] || continue
    for extra in ${EXTRAS//,/ }; do
      [[ ",${stamp##*-}," == *",$extra,"* ]] || continue 2
    done
    return 0
  done
  return 1
}
if ! covered; then
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2 || true
  "$VENV/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]" >&2
  for old in "$VENV"/.stamp-*; do [[ "$old" == *"/.stamp-$hash-"* ]] || rm -f "$old"; done
  touch "$VENV/.stamp-$hash-$EXTRAS"
fi
export PATH="$VENV/bin:$PATH"
