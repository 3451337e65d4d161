#!/usr/bin/env bash
# Installs everything `make` needs on a fresh machine, idempotently:
# Debian packages from scripts/system-packages.txt, then the pinned Python environment.
# Go is the one prerequisite not from Debian (bookworm's is 1.19, Filebeat 7.17.29 needs 1.23+):
# only `make test` needs it, to build Filebeat (scripts/filebeat.sh) and kube-score
# (scripts/kube_score.sh), so a machine without it
# is warned here and the Filebeat tests fail (not skip) there.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CACHE_DIR=${CACHE_DIR:-$HOME/.cache/mlops}
UV_VERSION=0.9.30
# shellcheck source=scripts/lib/pip_path.sh
source scripts/lib/pip_path.sh

missing_system_packages() {
  local package
  awk '!/^[[:space:]]*(#|$)/ {print $1}' scripts/system-packages.txt | while read -r package; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
      || echo "$package"
  done
}

install_system_packages() {
  local missing
  missing=$(missing_system_packages)
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: missing Debian packages: $missing (run as root, or install them)" >&2
    exit 1
  fi
  echo "bootstrap: installing Debian packages: $missing"
  apt-get update -qq
  # shellcheck disable=SC2086  # word splitting of the package list is intended
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

install_python_env() {
  mkdir -p "$CACHE_DIR"
  local python pip_path
  python="$(command -v "$PYTHON")"
  pip_path="$(path_without_rustc)"  # scripts/lib/pip_path.sh: pip must not probe rustup
  [ -x "$VENV/bin/python" ] || PATH="$pip_path" "$python" -m venv "$VENV"
  PATH="$pip_path" "$VENV/bin/python" -m pip install -q --cache-dir "$CACHE_DIR/pip" "uv==$UV_VERSION"
  # uv installs the exact lock in seconds; the project itself goes in editable, without deps.
  "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --cache-dir "$CACHE_DIR/uv" \
    -r requirements.lock
  "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --cache-dir "$CACHE_DIR/uv" \
    --no-deps -e .
}

check_go() {
  scripts/filebeat.sh check-go 2>/dev/null && return 0
  echo "bootstrap: warning: $(scripts/filebeat.sh check-go 2>&1 | sed 's/^filebeat.sh: error: //')" >&2
  echo "bootstrap: warning: 'make test' cannot build Filebeat without it; 'make run' does not need it" >&2
}

install_system_packages
install_python_env
check_go
echo "bootstrap: ready ($("$VENV/bin/python" --version), $(wc -l < requirements.lock) lock lines)"
