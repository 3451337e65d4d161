# shellcheck shell=bash
# Shared helpers of the local service scripts (scripts/elasticsearch.sh, scripts/sonarqube.sh):
# logging, verified downloads from Maven Central into a cache, and running as an unprivileged
# service user. Sourced, never executed; sourcing installs an EXIT trap that removes a partial
# download.
#
# The caller sets, before it calls any of these functions:
#   LOG_PREFIX    prefix of every message on stderr, e.g. "elasticsearch.sh"
#   HOME_DIR_VAR  name of its home-directory setting, for hints, e.g. "ES_HOME_DIR"
#
# It sets the settings both scripts share, each from the environment or a default:
#   SERVICE_USER  the unprivileged user the service runs as when the script runs as root
#   CACHE_DIR     downloads (absolute)
#   VAR_DIR       the parent of the instance directories
#   MAVEN_REPO    where the distributions come from

SERVICE_USER="${SERVICE_USER:-mlops}"
# Absolute, because it ends up in another user's environment.
CACHE_DIR="$(realpath -m "${CACHE_DIR:-$HOME/.cache/mlops}")"
VAR_DIR="${VAR_DIR:-$PWD/var}"
MAVEN_REPO="${MAVEN_REPO:-https://repo1.maven.org/maven2}"

# --- logging --------------------------------------------------------------------------------

log() { printf '%s: %s\n' "$LOG_PREFIX" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# --- download -------------------------------------------------------------------------------

PARTIAL_FILE=""
# An interrupted download must never be mistaken for a complete one.
cleanup_partial() { if [[ -n "$PARTIAL_FILE" ]]; then rm -f "$PARTIAL_FILE"; fi; }
trap cleanup_partial EXIT

# Check a file against the strongest checksum Maven Central publishes next to it.
verify_checksum() {
  local url="$1" file="$2" algo expected
  for algo in sha512 sha256 sha1; do
    if expected="$(curl -fsSL --retry 3 "$url.$algo")"; then
      expected="${expected%% *}"
      if ! printf '%s  %s\n' "$expected" "$file" | "${algo}sum" --check --status; then
        die "$algo checksum mismatch for $url"
      fi
      log "verified $algo of $(basename "$file")"
      return 0
    fi
  done
  log "warning: no checksum published for $url; using it unverified"
}

# fetch_cached URL DEST [SIZE_HINT]: download to a temporary name, verify, then rename, so the
# cache only ever holds whole files. SIZE_HINT (e.g. "about 950 MB") is shown while downloading.
fetch_cached() {
  local url="$1" dest="$2" size_hint="${3:-}" started progress=(--silent --show-error)
  [[ -s "$dest" ]] && return 0
  mkdir -p "$(dirname "$dest")"
  PARTIAL_FILE="$dest.part.$$"
  log "downloading $url${size_hint:+ ($size_hint)}"
  # A progress bar only for people: in CI logs it is noise.
  if [[ -t 2 ]]; then progress=(--progress-bar); fi
  started=$SECONDS
  curl -fL --retry 3 --retry-delay 2 "${progress[@]}" -o "$PARTIAL_FILE" "$url"
  verify_checksum "$url" "$PARTIAL_FILE"
  mv "$PARTIAL_FILE" "$dest"
  PARTIAL_FILE=""
  log "downloaded $(du -h "$dest" | cut -f1) in $((SECONDS - started))s"
}

# --- user and permissions -------------------------------------------------------------------

is_root() { [[ "$(id -u)" -eq 0 ]]; }

ensure_service_user() {
  is_root || return 0
  id -u "$SERVICE_USER" >/dev/null 2>&1 && return 0
  log "creating system user $SERVICE_USER"
  # A parallel run may create it first; only a user that still does not exist is an error.
  if ! useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$SERVICE_USER"; then
    id -u "$SERVICE_USER" >/dev/null 2>&1 || die "could not create user $SERVICE_USER"
  fi
}

# Run a command as the unprivileged service user (or as ourselves when not root).
as_service_user() {
  if is_root; then
    runuser -u "$SERVICE_USER" -- "$@"
  else
    "$@"
  fi
}

# require_access PATH MODE: the service user passes `test -MODE PATH`. Every parent of the path
# must be traversable by it (e.g. /root is 0700).
require_access() {
  local path="$1" mode="$2" dir="" part
  local -a parts
  as_service_user test "-$mode" "$path" && return 0
  # Walk down from / so the message names the first directory that blocks the way.
  IFS=/ read -ra parts <<<"${path#/}"
  for part in "${parts[@]}"; do
    dir="$dir/$part"
    [[ "$dir" == "$path" ]] && break
    if ! as_service_user test -x "$dir"; then
      die "user $SERVICE_USER cannot traverse $dir (needed for $path):" \
        "run 'chmod o+x $dir' or choose $HOME_DIR_VAR/VAR_DIR elsewhere"
    fi
  done
  die "user $SERVICE_USER has no -$mode access to $path"
}

# --- java and ports -------------------------------------------------------------------------

# Prints the major Java version of the JDK or JRE at $1 (e.g. 17), or nothing.
java_major() {
  "$1/bin/java" -XshowSettings:properties -version 2>&1 |
    sed -n 's/^ *java\.specification\.version = \([0-9]*\).*/\1/p'
}

port_in_use() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
