# shellcheck shell=bash
# A tool's own pinned virtual environment under CACHE_DIR, for tools that pin other versions of
# our dependencies (sourced by scripts/elastalert.sh, scripts/flaml.sh and scripts/mlserver.sh).
#
# The sourcing script sets TOOL (its name in messages), TOOL_VENV (the directory), CHECK (a
# file under TOOL_VENV that exists once installed) and PINS (the pip requirements), then calls
# `tool_venv_main "$@"` or its own dispatch. `setup` (venv_setup) creates TOOL_VENV (pip's cache
# under $CACHE_DIR/pip) and prints its bin/ directory; a venv whose stamp matches the pins is
# reused, so `setup` is idempotent. `path` prints the bin/ directory or fails if there is none.

# shellcheck source=scripts/lib/pip_path.sh
source "$REPO_ROOT/scripts/lib/pip_path.sh"

log() { printf '%s: %s\n' "$TOOL" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# requirements.lock's exact pin of a package (`name==version`): both sides of a benchmark then
# load and fit the same library versions.
locked() {
  local pin
  pin="$(grep -E "^$1==" "$REPO_ROOT/requirements.lock")" || die "$1 is not in requirements.lock"
  printf '%s' "$pin"
}

venv_ok() { [[ -x "$TOOL_VENV/$CHECK" && "$(cat "$TOOL_VENV/.installed" 2>/dev/null)" == "${PINS[*]}" ]]; }

venv_setup() {
  if ! venv_ok; then
    log "creating $TOOL_VENV (${PINS[*]}; about a minute)"
    rm -rf "$TOOL_VENV"
    local python pip_path
    python="$(command -v "${PYTHON:-python3}")"
    pip_path="$(path_without_rustc)"
    PATH="$pip_path" "$python" -m venv "$TOOL_VENV"
    PATH="$pip_path" PIP_CACHE_DIR="$CACHE_DIR/pip" "$TOOL_VENV/bin/pip" install --quiet \
      --disable-pip-version-check "${PINS[@]}" || {
      rm -rf "$TOOL_VENV"
      die "pip install of ${PINS[*]} failed"
    }
    printf '%s' "${PINS[*]}" >"$TOOL_VENV/.installed"
  fi
  printf '%s\n' "$TOOL_VENV/bin"
}

venv_path() {
  venv_ok || die "no $TOOL venv at $TOOL_VENV: run '$0 setup'"
  printf '%s\n' "$TOOL_VENV/bin"
}

tool_venv_main() {
  case "${1:-}" in
  setup) venv_setup ;;
  path) venv_path ;;
  *)
    printf 'usage: %s setup|path\n' "$0" >&2
    exit 2
    ;;
  esac
}
