#!/usr/bin/env bash
# Run a real single-node Elasticsearch on loopback for integration tests and local development.
#
#   scripts/elasticsearch.sh start|stop|status|url
#
# Uses the minimal "integ-test-zip" distribution from Maven Central (no bundled JDK; modules:
# transport-netty4, apm, x-pack-core, x-pack-security only: no `GET /`, no data streams, no
# ingest processors), so it needs a JDK 17+ (ES_JAVA_HOME, else `java` on PATH).
# Elasticsearch refuses to run as root: as root the server runs as SERVICE_USER (created on
# demand). Progress goes to stderr; `start` and `url` print only the URL on stdout.
#
# Settings (environment): ES_VERSION, ES_PORT, ES_TRANSPORT_PORT, ES_HOME_DIR, ES_PATH_REPO,
# ES_JAVA_HOME, ES_JAVA_OPTS, ES_START_TIMEOUT, ES_STOP_TIMEOUT, SERVICE_USER, CACHE_DIR, VAR_DIR,
# MAVEN_REPO.
set -euo pipefail

LOG_PREFIX="elasticsearch.sh"
HOME_DIR_VAR="ES_HOME_DIR"
# Helpers, and the shared settings SERVICE_USER, CACHE_DIR, VAR_DIR, MAVEN_REPO.
# shellcheck source-path=SCRIPTDIR source=lib/services.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/services.sh"

ES_VERSION="${ES_VERSION:-8.19.21}"
ES_PORT="${ES_PORT:-9200}"
# Transport (node-to-node) port: loopback only, offset so it never clashes with the HTTP port.
ES_TRANSPORT_PORT="${ES_TRANSPORT_PORT:-$((ES_PORT + 100))}"
# Small fixed heap: the machines have 2 cores and the test data is tiny.
ES_JAVA_OPTS="${ES_JAVA_OPTS:--Xms512m -Xmx512m}"
ES_START_TIMEOUT="${ES_START_TIMEOUT:-180}"
ES_STOP_TIMEOUT="${ES_STOP_TIMEOUT:-60}"
# Absolute, because these paths end up in elasticsearch.yml and in another user's environment.
ES_HOME_DIR="$(realpath -m "${ES_HOME_DIR:-$VAR_DIR/elasticsearch}")"
# path.repo: where filesystem snapshot repositories may live (`mlops backup create` puts its
# snapshots in a repository under it). Outside the data directory, so it outlives the node's data.
ES_PATH_REPO="$(realpath -m "${ES_PATH_REPO:-$ES_HOME_DIR/snapshots}")"

readonly MIN_JAVA=17
readonly DIST_DIR="$ES_HOME_DIR/elasticsearch-$ES_VERSION"
readonly CONF_DIR="$ES_HOME_DIR/config"
readonly DATA_DIR="$ES_HOME_DIR/data"
readonly LOGS_DIR="$ES_HOME_DIR/logs"
readonly TMP_DIR="$ES_HOME_DIR/tmp"
readonly RUN_DIR="$ES_HOME_DIR/run"
readonly PID_FILE="$RUN_DIR/elasticsearch.pid"
readonly CLUSTER_NAME="mlops-local"
readonly ES_URL="http://127.0.0.1:$ES_PORT"
LAUNCHED=0

# --- java -----------------------------------------------------------------------------------

# ES_JAVA_HOME if set, else the JDK behind `java` on PATH.
find_java_home() {
  local home="${ES_JAVA_HOME:-}" java_bin major
  if [[ -z "$home" ]]; then
    java_bin="$(command -v java)" || die "no java on PATH; install a JDK $MIN_JAVA+ or set ES_JAVA_HOME"
    home="$(dirname "$(dirname "$(readlink -f "$java_bin")")")"
  fi
  [[ -x "$home/bin/java" ]] || die "ES_JAVA_HOME=$home has no bin/java"
  major="$(java_major "$home")"
  [[ -n "$major" && "$major" -ge "$MIN_JAVA" ]] ||
    die "Elasticsearch $ES_VERSION needs Java $MIN_JAVA+, $home is Java ${major:-unknown}"
  printf '%s\n' "$home"
}

# --- install and configure ------------------------------------------------------------------

install_distribution() {
  local zip staging
  [[ -f "$DIST_DIR/bin/elasticsearch" ]] && return 0
  zip="$CACHE_DIR/elasticsearch-integ-test-zip-$ES_VERSION.zip"
  fetch_cached "$MAVEN_REPO/org/elasticsearch/distribution/integ-test-zip/elasticsearch/$ES_VERSION/elasticsearch-$ES_VERSION.zip" "$zip"
  # Unpack beside the target and rename, so a half-unpacked tree is never used.
  staging="$ES_HOME_DIR/.unpack.$$"
  # Also drops what an interrupted earlier unpack left behind.
  rm -rf "$ES_HOME_DIR"/.unpack.*
  mkdir -p "$staging"
  log "unpacking into $DIST_DIR"
  unzip -q "$zip" -d "$staging"
  mv "$staging/elasticsearch-$ES_VERSION" "$DIST_DIR"
  rm -rf "$staging"
}

write_config() {
  # Fresh config from upstream defaults on every start, so nothing stale (auto-generated
  # certificates, keystore entries) survives a settings change; then our elasticsearch.yml.
  rm -rf "$CONF_DIR"
  mkdir -p "$CONF_DIR" "$DATA_DIR" "$LOGS_DIR" "$TMP_DIR" "$RUN_DIR" "$ES_PATH_REPO"
  cp -R "$DIST_DIR/config/." "$CONF_DIR/"
  cat >"$CONF_DIR/elasticsearch.yml" <<EOF
# Written by scripts/elasticsearch.sh on every start; edit the script, not this file.
cluster.name: $CLUSTER_NAME
node.name: $CLUSTER_NAME-1
path.data: $DATA_DIR
path.logs: $LOGS_DIR
network.host: 127.0.0.1
http.port: $ES_PORT
transport.port: $ES_TRANSPORT_PORT
discovery.type: single-node
path.repo: ["$ES_PATH_REPO"]
# Developer disks are often nearly full; the flood-stage watermark would make indices read-only.
cluster.routing.allocation.disk.threshold_enabled: false
# The 8.x integ-test-zip does ship x-pack-security; left on, the first start auto-configures
# TLS + passwords and plain-HTTP clients get empty replies. Local test server: plain HTTP.
xpack.security.enabled: false
EOF
  if is_root; then
    chown -R "$SERVICE_USER:" "$ES_HOME_DIR" "$ES_PATH_REPO"
  fi
}

# --- process control ------------------------------------------------------------------------

# Prints the pid of our Elasticsearch if it is alive (guards against a stale, reused pid).
running_pid() {
  local pid
  [[ -s "$PID_FILE" ]] || return 1
  pid="$(<"$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'org\.elasticsearch' || return 1
  printf '%s\n' "$pid"
}

is_healthy() {
  curl -fs -o /dev/null --max-time 15 "$ES_URL/_cluster/health?wait_for_status=yellow&timeout=10s"
}

print_logs() {
  local file
  for file in "$LOGS_DIR/startup.log" "$LOGS_DIR/$CLUSTER_NAME.log"; do
    [[ -s "$file" ]] || continue
    log "--- last lines of $file"
    tail -n 40 "$file" >&2
  done
}

# A start that fails must not leave a JVM behind: stop what this call launched.
fail_start() {
  log "error: $*"
  print_logs
  if ((LAUNCHED)); then stop; fi
  exit 1
}

wait_until_healthy() {
  local deadline="$1"
  until is_healthy; do
    running_pid >/dev/null || fail_start "Elasticsearch exited during start-up"
    ((SECONDS < deadline)) ||
      fail_start "cluster not yellow at $ES_URL after ${ES_START_TIMEOUT}s (ES_START_TIMEOUT)"
    sleep 1
  done
}

# `-d` returns once the node is up. timeout bounds a hung start-up and, because it runs the CLI
# in a process group of its own, its signal also reaches the server JVM that the CLI forked;
# that group also keeps a Ctrl-C in the caller's terminal away from the daemon.
launch() {
  local java_home="$1"
  # cwd must be readable by the service user; the caller's may be /root.
  (
    cd "$ES_HOME_DIR"
    as_service_user timeout --kill-after=10 "$ES_START_TIMEOUT" \
      env ES_JAVA_HOME="$java_home" ES_PATH_CONF="$CONF_DIR" \
      ES_JAVA_OPTS="$ES_JAVA_OPTS" ES_TMPDIR="$TMP_DIR" \
      "$DIST_DIR/bin/elasticsearch" -d -p "$PID_FILE"
  ) >"$LOGS_DIR/startup.log" 2>&1
}

start() {
  local java_home started rc=0
  if running_pid >/dev/null; then
    wait_until_healthy $((SECONDS + ES_START_TIMEOUT))
    log "already running at $ES_URL"
    printf '%s\n' "$ES_URL"
    return 0
  fi
  port_in_use "$ES_PORT" && die "port $ES_PORT is used by another process (set ES_PORT)"
  port_in_use "$ES_TRANSPORT_PORT" &&
    die "transport port $ES_TRANSPORT_PORT is used by another process (set ES_TRANSPORT_PORT)"
  java_home="$(find_java_home)"
  ensure_service_user
  mkdir -p "$ES_HOME_DIR"
  install_distribution
  write_config
  require_access "$DIST_DIR/bin/elasticsearch" r
  require_access "$java_home/bin/java" x
  require_access "$RUN_DIR" w
  log "starting Elasticsearch $ES_VERSION on $ES_URL (java $(java_major "$java_home"), home $ES_HOME_DIR)"
  started=$SECONDS
  LAUNCHED=1
  launch "$java_home" || rc=$?
  if ((rc != 0)); then
    ((rc != 124)) || fail_start "not started within ${ES_START_TIMEOUT}s (ES_START_TIMEOUT)"
    fail_start "bin/elasticsearch -d exited with status $rc"
  fi
  wait_until_healthy $((started + ES_START_TIMEOUT))
  log "yellow after $((SECONDS - started))s"
  printf '%s\n' "$ES_URL"
}

wait_gone() {
  local pid="$1" timeout="$2" deadline
  deadline=$((SECONDS + timeout))
  while [[ -e "/proc/$pid" ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  log "stopping pid $pid"
  kill -TERM "$pid"
  if ! wait_gone "$pid" "$ES_STOP_TIMEOUT"; then
    log "still alive after ${ES_STOP_TIMEOUT}s, sending SIGKILL"
    kill -KILL "$pid"
    wait_gone "$pid" 15 || die "pid $pid survived SIGKILL"
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

status() {
  local pid
  if pid="$(running_pid)" && curl -fs -o /dev/null --max-time 5 "$ES_URL/_cluster/health"; then
    log "running (pid $pid) at $ES_URL"
    return 0
  fi
  log "not running at $ES_URL"
  return 1
}

main() {
  case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  url) printf '%s\n' "$ES_URL" ;;
  *)
    printf 'usage: %s start|stop|status|url\n' "$0" >&2
    exit 2
    ;;
  esac
}

main "$@"
