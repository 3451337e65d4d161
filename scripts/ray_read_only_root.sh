#!/usr/bin/env bash
# Does Ray run with a read-only root filesystem? (k8s/base/rayservice.yaml sets
# readOnlyRootFilesystem on the head and workers on the strength of this check.)
#
# In a private mount namespace: a tmpfs over /tmp (the pod's emptyDir), then / remounted
# read-only; there `ray start --head` (dashboard on), Ray Serve in HAProxy mode with two
# replicas that each write a temp file per request (as a model download does), 20 requests,
# shutdown. Prints `RESULT ok N of 20`. Needs root (unshare -m) and the project's venv.
#
#   sudo scripts/ray_read_only_root.sh        # about 1-3 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_BIN="${VENV:-$PWD/.venv}/bin"
APP="$PWD/scripts/lib/ray_read_only_app.py"

if [ "${1:-}" != "--inside" ]; then
  ports=$("$VENV_BIN/python" -c \
    "from ml.common.net import free_port as f; print(f(), f(), f())")
  # shellcheck disable=SC2086  # three port numbers
  exec unshare -m --propagation private "$0" --inside $ports
fi
serve_port="$2" gcs_port="$3" dashboard_port="$4"
mount -t tmpfs -o size=2g tmpfs /tmp
mount -o remount,bind,ro /
if touch /.ray-read-only-probe 2>/dev/null; then
  echo "the root is still writable: not a valid check" >&2
  exit 1
fi
export HOME=/root RAY_USAGE_STATS_ENABLED=0 RAY_SERVE_ENABLE_HA_PROXY=1 SERVE_PORT="$serve_port"
trap '"$VENV_BIN/ray" stop --force >/dev/null 2>&1 || true' EXIT
"$VENV_BIN/ray" start --head --num-cpus=2 --port="$gcs_port" --dashboard-port="$dashboard_port" \
  --include-dashboard=true --disable-usage-stats >/tmp/ray-start.log 2>&1 \
  || { echo "ray start failed on a read-only root:" >&2; tail -30 /tmp/ray-start.log >&2; exit 1; }
timeout 300 "$VENV_BIN/python" "$APP"
