#!/usr/bin/env bash
# ElastAlert 2 in its own virtual environment (it pins elasticsearch==7.10.1 and urllib3 1.26,
# older than the project's own client), created once and reused.
#
#   scripts/elastalert.sh setup|path|run [elastalert args...]
#
# `setup` creates $CACHE_DIR/elastalert/venv-<version> (scripts/lib/tool_venv.sh: idempotent);
# `path` prints its bin/ directory. `run` starts
# ElastAlert on elk/alerts/rules/ against ELASTICSEARCH_URL (see docs/operations.md).
# pytz is pinned too: ElastAlert 2.19.0 imports it without declaring it.
#
# Settings (environment): CACHE_DIR, PYTHON, PROJECT_PYTHON, VAR_DIR, ELASTALERT_RUN_DIR,
# ELASTALERT_RUN_EVERY_S, ELASTALERT_BUFFER_TIME_S, ELASTALERT_RULES_DIR,
# ELASTALERT_WRITEBACK_INDEX, and the project's
# ELASTICSEARCH_* and SMTP_* settings.
set -euo pipefail

CACHE_DIR="$(realpath -m "${CACHE_DIR:-$HOME/.cache/mlops}")"
PYTHON="${PYTHON:-python3}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly TOOL="elastalert.sh"
readonly TOOL_VENV="$CACHE_DIR/elastalert/venv-2.19.0"
readonly CHECK="bin/elastalert"
readonly PINS=("elastalert2==2.19.0" "pytz==2025.2")
# shellcheck source=scripts/lib/tool_venv.sh
source "$REPO_ROOT/scripts/lib/tool_venv.sh"
# The project's own interpreter renders the config (it reads ml.config).
PROJECT_PYTHON="${PROJECT_PYTHON:-$(realpath -m "$REPO_ROOT/${VENV:-.venv}")/bin/python}"

# Renders the config from the project's settings (ELASTICSEARCH_*, SMTP_*: ml/config.py) into
# ELASTALERT_RUN_DIR, creates ElastAlert's writeback index if missing, then runs in the foreground.
run() {
  venv_ok || venv_setup >/dev/null
  local run_dir="${ELASTALERT_RUN_DIR:-${VAR_DIR:-$REPO_ROOT/var}/elastalert}" config
  config="$("$PROJECT_PYTHON" -m elk.alerts.elastalert_config "$run_dir" \
    --run-every-s "${ELASTALERT_RUN_EVERY_S:-60}" --buffer-time-s "${ELASTALERT_BUFFER_TIME_S:-900}" \
    ${ELASTALERT_RULES_DIR:+--rules-dir "$ELASTALERT_RULES_DIR"} \
    ${ELASTALERT_WRITEBACK_INDEX:+--writeback-index "$ELASTALERT_WRITEBACK_INDEX"})" ||
    die "could not render the ElastAlert config (see above)"
  "$TOOL_VENV/bin/elastalert-create-index" --config "$config" >&2 ||
    die "elastalert-create-index failed against ${ELASTICSEARCH_URL:-<unset>}"
  exec "$TOOL_VENV/bin/elastalert" --config "$config" "$@"
}

case "${1:-}" in
setup) venv_setup ;;
path) venv_path ;;
run)
  shift
  run "$@"
  ;;
*)
  printf 'usage: %s setup|path|run [elastalert args...]\n' "$0" >&2
  exit 2
  ;;
esac
