#!/usr/bin/env bash
# MLServer (Seldon's inference server, the runtime behind KServe's sklearn predictor) in its own
# virtual environment, created once and reused: `make bench-serving` compares our server with it.
# MLServer 1.7.1 pins older dependencies than the project (uvloop<0.20, FastAPI 0.115), so it
# cannot share .venv.
#
#   scripts/mlserver.sh setup|path
#
# `setup` creates $CACHE_DIR/mlserver/venv-<version> (pip's cache under $CACHE_DIR/pip) and prints
# its bin/ directory; a venv whose stamp matches the pins is reused, so `setup` is idempotent.
# scikit-learn and joblib are pinned to requirements.lock's versions: the benchmark hands MLServer
# the project's fitted pipeline as a joblib pickle, which only loads under the same scikit-learn.
# httptools too: MLServer's uvicorn parses HTTP with it when installed (else with h11, slower),
# and the benchmark gives MLServer its best settings.
# `path` prints the bin/ directory or fails if there is none.
#
# Settings (environment): CACHE_DIR, PYTHON.
set -euo pipefail

CACHE_DIR="$(realpath -m "${CACHE_DIR:-$HOME/.cache/mlops}")"
PYTHON="${PYTHON:-python3}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly VERSION="1.7.1"

log() { printf 'mlserver.sh: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

locked() {
  local pin
  pin="$(grep -E "^$1==" "$REPO_ROOT/requirements.lock")" || die "$1 is not in requirements.lock"
  printf '%s' "$pin"
}

PINS=("mlserver==$VERSION" "mlserver-sklearn==$VERSION" "uvloop<0.20" "$(locked httptools)"
  "$(locked scikit-learn)" "$(locked joblib)")
readonly PINS
readonly MLS_VENV="$CACHE_DIR/mlserver/venv-$VERSION"
readonly STAMP="$MLS_VENV/.installed"

venv_ok() { [[ -x "$MLS_VENV/bin/mlserver" && "$(cat "$STAMP" 2>/dev/null)" == "${PINS[*]}" ]]; }

setup() {
  if ! venv_ok; then
    log "creating $MLS_VENV (${PINS[*]}; about a minute)"
    rm -rf "$MLS_VENV"
    "$PYTHON" -m venv "$MLS_VENV"
    PIP_CACHE_DIR="$CACHE_DIR/pip" "$MLS_VENV/bin/pip" install --quiet --disable-pip-version-check \
      "${PINS[@]}" || {
      rm -rf "$MLS_VENV"
      die "pip install of ${PINS[*]} failed"
    }
    printf '%s' "${PINS[*]}" >"$STAMP"
  fi
  printf '%s\n' "$MLS_VENV/bin"
}

case "${1:-}" in
setup) setup ;;
path) venv_ok || die "no MLServer venv at $MLS_VENV: run '$0 setup'" && printf '%s\n' "$MLS_VENV/bin" ;;
*)
  printf 'usage: %s setup|path\n' "$0" >&2
  exit 2
  ;;
esac
