#!/usr/bin/env bash
# FLAML (Microsoft's AutoML library: what a user would pick instead of our tuning) in its own
# virtual environment, created once and reused: `make bench-automl` races our tuning against its
# AutoML.fit. flaml[automl] pulls LightGBM and XGBoost, which the project does not use, so it gets
# a venv of its own rather than .venv.
#
#   scripts/flaml.sh setup|path
#
# `setup` creates $CACHE_DIR/flaml/venv-<version> (pip's cache under $CACHE_DIR/pip) and prints
# its bin/ directory; a venv whose stamp matches the pins is reused, so `setup` is idempotent.
# scikit-learn, numpy, pandas and pyarrow are pinned to requirements.lock's versions so both sides
# of the race read the same split files and fit the same scikit-learn estimators.
# `path` prints the bin/ directory or fails if there is none.
#
# Settings (environment): CACHE_DIR, PYTHON.
set -euo pipefail

CACHE_DIR="$(realpath -m "${CACHE_DIR:-$HOME/.cache/mlops}")"
PYTHON="${PYTHON:-python3}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly VERSION="2.8.0"

log() { printf 'flaml.sh: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

locked() {
  local pin
  pin="$(grep -E "^$1==" "$REPO_ROOT/requirements.lock")" || die "$1 is not in requirements.lock"
  printf '%s' "$pin"
}

PINS=("flaml[automl]==$VERSION" "$(locked scikit-learn)" "$(locked numpy)" "$(locked pandas)"
  "$(locked pyarrow)")
readonly PINS
readonly FLAML_VENV="$CACHE_DIR/flaml/venv-$VERSION"
readonly STAMP="$FLAML_VENV/.installed"

venv_ok() { [[ -x "$FLAML_VENV/bin/python" && "$(cat "$STAMP" 2>/dev/null)" == "${PINS[*]}" ]]; }

setup() {
  if ! venv_ok; then
    log "creating $FLAML_VENV (${PINS[*]}; about a minute)"
    rm -rf "$FLAML_VENV"
    "$PYTHON" -m venv "$FLAML_VENV"
    PIP_CACHE_DIR="$CACHE_DIR/pip" "$FLAML_VENV/bin/pip" install --quiet --disable-pip-version-check \
      "${PINS[@]}" || {
      rm -rf "$FLAML_VENV"
      die "pip install of ${PINS[*]} failed"
    }
    printf '%s' "${PINS[*]}" >"$STAMP"
  fi
  printf '%s\n' "$FLAML_VENV/bin"
}

case "${1:-}" in
setup) setup ;;
path) venv_ok || die "no FLAML venv at $FLAML_VENV: run '$0 setup'" && printf '%s\n' "$FLAML_VENV/bin" ;;
*)
  printf 'usage: %s setup|path\n' "$0" >&2
  exit 2
  ;;
esac
