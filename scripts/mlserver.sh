#!/usr/bin/env bash
# MLServer (Seldon's inference server, the runtime behind KServe's sklearn predictor) in its own
# virtual environment, created once and reused: `make bench-serving` compares our server with it.
# MLServer 1.7.1 pins older dependencies than the project (uvloop<0.20, FastAPI 0.115), so it
# cannot share .venv.
#
#   scripts/mlserver.sh setup|path
#
# `setup` creates $CACHE_DIR/mlserver/venv-<version> (scripts/lib/tool_venv.sh: idempotent).
# scikit-learn and joblib are pinned to requirements.lock's versions: the benchmark hands MLServer
# the project's fitted pipeline as a joblib pickle, which only loads under the same scikit-learn.
# httptools too: MLServer's uvicorn parses HTTP with it when installed (else with h11, slower),
# and the benchmark gives MLServer its best settings.
#
# Settings (environment): CACHE_DIR, PYTHON.
set -euo pipefail

CACHE_DIR="$(realpath -m "${CACHE_DIR:-$HOME/.cache/mlops}")"
PYTHON="${PYTHON:-python3}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly VERSION="1.7.1"
readonly TOOL="mlserver.sh"
readonly TOOL_VENV="$CACHE_DIR/mlserver/venv-$VERSION"
readonly CHECK="bin/mlserver"
# shellcheck source=scripts/lib/tool_venv.sh
source "$REPO_ROOT/scripts/lib/tool_venv.sh"

PINS=("mlserver==$VERSION" "mlserver-sklearn==$VERSION" "uvloop<0.20" "$(locked httptools)"
  "$(locked scikit-learn)" "$(locked joblib)")
readonly PINS

tool_venv_main "$@"
