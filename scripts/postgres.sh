#!/usr/bin/env bash
# Run a throwaway PostgreSQL cluster on loopback for integration tests and local development
# (the CT database, MLOPS_CT_DATABASE).
#
#   scripts/postgres.sh start|stop|status|url
#
# Uses Debian's server binaries (/usr/lib/postgresql/<version>/bin, package `postgresql` in
# scripts/system-packages.txt, installed by `make setup`). `start` creates the cluster on first
# use (initdb), listens on 127.0.0.1:PG_PORT only with its socket in PG_HOME_DIR/run, and makes
# a login role PG_USER (password PG_PASSWORD, scram-sha-256, may create databases) owning the
# database PG_DATABASE. Every connection needs a password; the superuser's is random, kept in
# PG_HOME_DIR/superuser.pgpass (mode 600) and never printed.
# PostgreSQL refuses to run as root: as root the server runs as SERVICE_USER (created on demand).
# Progress goes to stderr; `start` and `url` print only the URL, without the password, on stdout.
#
# Settings (environment): PG_PASSWORD (required by `start`), PG_USER, PG_DATABASE, PG_PORT,
# PG_HOME_DIR, PG_BIN_DIR, PG_TIMEZONE (the server's TimeZone; default the machine's),
# PG_START_TIMEOUT, PG_STOP_TIMEOUT, SERVICE_USER, VAR_DIR.
set -euo pipefail

LOG_PREFIX="postgres.sh"
HOME_DIR_VAR="PG_HOME_DIR"
# Helpers, and the shared settings SERVICE_USER, CACHE_DIR, VAR_DIR, MAVEN_REPO.
# shellcheck source-path=SCRIPTDIR source=lib/services.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/services.sh"

PG_PORT="${PG_PORT:-5432}"
PG_USER="${PG_USER:-mlops_ct}"
PG_DATABASE="${PG_DATABASE:-ct}"
PG_START_TIMEOUT="${PG_START_TIMEOUT:-60}"
PG_STOP_TIMEOUT="${PG_STOP_TIMEOUT:-30}"
# Absolute, because these paths end up in postgresql.conf and in another user's environment.
PG_HOME_DIR="$(realpath -m "${PG_HOME_DIR:-$VAR_DIR/postgres}")"

readonly DATA_DIR="$PG_HOME_DIR/data"
readonly RUN_DIR="$PG_HOME_DIR/run"
readonly LOG_FILE="$PG_HOME_DIR/postgres.log"
readonly PGPASS_FILE="$PG_HOME_DIR/superuser.pgpass"
readonly SUPERUSER="postgres"
readonly PG_URL="postgresql+psycopg://$PG_USER@127.0.0.1:$PG_PORT/$PG_DATABASE"
LAUNCHED=0

# --- binaries -------------------------------------------------------------------------------

# PG_BIN_DIR if set, else the newest /usr/lib/postgresql/<version>/bin with a server.
find_bin_dir() {
  local dir="${PG_BIN_DIR:-}"
  if [[ -z "$dir" ]]; then
    dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1)"
  fi
  [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]] ||
    die "no PostgreSQL server binaries (initdb, pg_ctl, postgres) in ${dir:-/usr/lib/postgresql/*/bin}:" \
      "run 'make setup' (it installs Debian's postgresql from scripts/system-packages.txt)"
  printf '%s\n' "$dir"
}

# --- cluster --------------------------------------------------------------------------------

# First start only: a cluster whose every login needs a password.
init_cluster() {
  local bin_dir="$1" password pwfile
  [[ -s "$DATA_DIR/PG_VERSION" ]] && return 0
  mkdir -p "$PG_HOME_DIR"
  password="$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
  # pgpass for our own psql; initdb reads the bare password from a file (never from argv).
  (umask 077 && printf '*:*:*:%s:%s\n' "$SUPERUSER" "$password" >"$PGPASS_FILE")
  pwfile="$PG_HOME_DIR/.initdb-password"
  (umask 077 && printf '%s\n' "$password" >"$pwfile")
  if is_root; then chown -R "$SERVICE_USER:" "$PG_HOME_DIR"; fi
  log "initdb $DATA_DIR"
  # --no-sync: a throwaway cluster, no need to wait for the disk.
  if ! as_service_user "$bin_dir/initdb" -D "$DATA_DIR" -U "$SUPERUSER" --pwfile="$pwfile" \
    --auth=scram-sha-256 --encoding=UTF8 --locale=C --no-sync >"$PG_HOME_DIR/initdb.log" 2>&1; then
    rm -f "$pwfile"
    tail -n 20 "$PG_HOME_DIR/initdb.log" >&2
    die "initdb failed (log: $PG_HOME_DIR/initdb.log)"
  fi
  rm -f "$pwfile"
}

# Rewritten on every start, so a changed port or directory always applies.
write_config() {
  mkdir -p "$RUN_DIR"
  grep -q "^include_if_exists = 'mlops.conf'" "$DATA_DIR/postgresql.conf" ||
    printf "\ninclude_if_exists = 'mlops.conf'\n" >>"$DATA_DIR/postgresql.conf"
  cat >"$DATA_DIR/mlops.conf" <<EOF
# Written by scripts/postgres.sh on every start; edit the script, not this file.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$RUN_DIR'
# Small: the machines have 2 cores and the test data is tiny.
shared_buffers = 32MB
max_connections = 50
# Throwaway data: durability is not worth the disk waits.
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  # The tests pick a zone far from UTC: code that assumes a UTC server shows itself.
  if [[ -n "${PG_TIMEZONE:-}" ]]; then
    printf "timezone = '%s'\nlog_timezone = 'UTC'\n" "$PG_TIMEZONE" >>"$DATA_DIR/mlops.conf"
  fi
  cat >"$DATA_DIR/pg_hba.conf" <<EOF
# Written by scripts/postgres.sh on every start: passwords (scram-sha-256), loopback only.
local all all scram-sha-256
host  all all 127.0.0.1/32 scram-sha-256
EOF
  if is_root; then chown -R "$SERVICE_USER:" "$PG_HOME_DIR"; fi
}

# --- process control ------------------------------------------------------------------------

is_running() {
  local bin_dir="$1"
  [[ -s "$DATA_DIR/PG_VERSION" ]] || return 1
  as_service_user "$bin_dir/pg_ctl" status -D "$DATA_DIR" >/dev/null 2>&1
}

print_log() {
  [[ -s "$LOG_FILE" ]] || return 0
  log "--- last lines of $LOG_FILE"
  tail -n 40 "$LOG_FILE" >&2
}

# A start that fails must not leave a server behind: stop what this call launched.
fail_start() {
  log "error: $*"
  print_log
  if ((LAUNCHED)); then stop; fi
  exit 1
}

# The superuser's psql over the socket; SQL on stdin. PG_PASSWORD reaches it in the environment
# (\getenv), never in argv.
admin_psql() {
  local bin_dir="$1"
  PGPASSFILE="$PGPASS_FILE" as_service_user "$bin_dir/psql" -X -q -v ON_ERROR_STOP=1 \
    -h "$RUN_DIR" -p "$PG_PORT" -U "$SUPERUSER" -d postgres
}

# The application's role (password login, may create databases: the tests make one per test)
# and its database; idempotent, and a changed PG_PASSWORD applies.
ensure_role_and_database() {
  local bin_dir="$1"
  [[ -n "${PG_PASSWORD:-}" ]] || fail_start "PG_PASSWORD is not set (the password of role $PG_USER)"
  export PG_PASSWORD PG_USER PG_DATABASE
  admin_psql "$bin_dir" <<'SQL' || fail_start "could not create role $PG_USER / database $PG_DATABASE"
\getenv app_user PG_USER
\getenv app_password PG_PASSWORD
\getenv app_database PG_DATABASE
SELECT format('CREATE ROLE %I', :'app_user')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_user') \gexec
ALTER ROLE :"app_user" LOGIN CREATEDB PASSWORD :'app_password';
SELECT format('CREATE DATABASE %I OWNER %I', :'app_database', :'app_user')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'app_database') \gexec
SQL
}

start() {
  local bin_dir started
  bin_dir="$(find_bin_dir)"
  if is_running "$bin_dir"; then
    ensure_role_and_database "$bin_dir"
    log "already running at $PG_URL"
    printf '%s\n' "$PG_URL"
    return 0
  fi
  port_in_use "$PG_PORT" && die "port $PG_PORT is used by another process (set PG_PORT)"
  ensure_service_user
  mkdir -p "$PG_HOME_DIR"
  if is_root; then chown "$SERVICE_USER:" "$PG_HOME_DIR"; fi
  require_access "$bin_dir/postgres" x
  require_access "$PG_HOME_DIR" w
  init_cluster "$bin_dir"
  write_config
  log "starting PostgreSQL $(<"$DATA_DIR/PG_VERSION") on 127.0.0.1:$PG_PORT (home $PG_HOME_DIR)"
  started=$SECONDS
  LAUNCHED=1
  # -w: returns once the server accepts connections (or the timeout passes).
  as_service_user "$bin_dir/pg_ctl" start -D "$DATA_DIR" -l "$LOG_FILE" -w \
    -t "$PG_START_TIMEOUT" >/dev/null 2>&1 ||
    fail_start "pg_ctl start failed: the server exited, or accepted no connection on" \
      "127.0.0.1:$PG_PORT within ${PG_START_TIMEOUT}s (PG_START_TIMEOUT)"
  ensure_role_and_database "$bin_dir"
  log "ready after $((SECONDS - started))s"
  printf '%s\n' "$PG_URL"
}

stop() {
  local bin_dir
  bin_dir="$(find_bin_dir)"
  if ! is_running "$bin_dir"; then
    log "not running"
    return 0
  fi
  log "stopping"
  # fast: roll back open sessions (the tests' pooled connections) instead of waiting for them.
  if ! as_service_user "$bin_dir/pg_ctl" stop -D "$DATA_DIR" -m fast -w -t "$PG_STOP_TIMEOUT" \
    >/dev/null 2>&1; then
    log "not stopped after ${PG_STOP_TIMEOUT}s, stopping immediately"
    as_service_user "$bin_dir/pg_ctl" stop -D "$DATA_DIR" -m immediate -w >/dev/null 2>&1 ||
      die "could not stop the server of $DATA_DIR"
  fi
  log "stopped"
}

status() {
  local bin_dir
  bin_dir="$(find_bin_dir)"
  if is_running "$bin_dir" && "$bin_dir/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
    log "running at $PG_URL"
    return 0
  fi
  log "not running at 127.0.0.1:$PG_PORT"
  return 1
}

main() {
  # Every path is absolute by now; the caller's directory may be closed to the service user
  # (/root), which initdb and pg_ctl would complain about.
  cd /
  case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  url) printf '%s\n' "$PG_URL" ;;
  *)
    printf 'usage: %s start|stop|status|url\n' "$0" >&2
    exit 2
    ;;
  esac
}

main "$@"
