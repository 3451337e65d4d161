#!/usr/bin/env bash
# Runs the host/Ray collector (`mlops monitor run`) detached beside serving, so `make run` can
# finish with everything up; `stop` ends it. State: $VAR_DIR/monitor.pid, log: $VAR_DIR/log/.
set -euo pipefail

cd "$(dirname "$0")/.."
VAR_DIR=${VAR_DIR:-$PWD/var}
VENV=${VENV:-.venv}
PID_FILE="$VAR_DIR/monitor.pid"
LOG_FILE="$VAR_DIR/log/monitor.out"

running_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid
  pid=$(cat "$PID_FILE")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

start() {
  if pid=$(running_pid); then
    echo "monitor: already running (pid $pid)"
    return 0
  fi
  mkdir -p "$VAR_DIR/log"
  nohup "$VENV/bin/mlops" monitor run >>"$LOG_FILE" 2>&1 &
  echo $! >"$PID_FILE"
  sleep 1
  if ! running_pid >/dev/null; then
    echo "monitor: exited at start; last lines of $LOG_FILE:" >&2
    tail -n 20 "$LOG_FILE" >&2
    exit 1
  fi
  echo "monitor: host collector running (pid $(cat "$PID_FILE")), events in $VAR_DIR/log/"
}

stop() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$PID_FILE"
    echo "monitor: not running"
    return 0
  fi
  kill "$pid"
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid"
  fi
  rm -f "$PID_FILE"
  echo "monitor: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) running_pid >/dev/null ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
