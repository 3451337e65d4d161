#!/usr/bin/env bash
# FLAML (Microsoft's AutoML library: what a user would pick instead of our tuning) in its own
# virtual environment, created once and reused: `make bench-automl` races our tuning against its
# AutoML.fit. flaml[automl] pulls LightGBM and XGBoost, which the project does not use, so it gets
# a venv of its own rather than .venv.
#
#   scripts/flaml.sh setup|path
#
# `setup` creates $CACHE_DIR/flaml/venv-<version> (scripts/lib/tool_venv.sh: idempotent).
# scikit-learn, numpy, pandas and pyarrow are pinned to requirements.lock's versions so both sides
# of the race read the same split files and fit the same scikit-learn estimators.
#
# Settings (environment): CACHE_DIR, PYTHON.
set -euo pipefail

CACHE_DIR="$(realpath -m "${CACHE_DIR:-$HOME/.cache/mlops}")"
PYTHON="${PYTHON:-python3}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly VERSION="2.8.0"
readonly TOOL="flaml.sh"
readonly TOOL_VENV="$CACHE_DIR/flaml/venv-$VERSION"
readonly CHECK="bin/python"
# shellcheck source=scripts/lib/tool_venv.sh
source "$REPO_ROOT/scripts/lib/tool_venv.sh"

PINS=("flaml[automl]==$VERSION" "$(locked scikit-learn)" "$(locked numpy)" "$(locked pandas)"
  "$(locked pyarrow)")
readonly PINS

tool_venv_main "$@"
