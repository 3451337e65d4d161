#!/usr/bin/env bash
# Build the OSS Filebeat the integration tests run, once, from its Go module.
#
#   scripts/filebeat.sh build|path|version|check-go
#
# `build` fetches github.com/elastic/beats/v7 at FILEBEAT_VERSION from the Go module proxy,
# copies it to a writable directory (so the module's own `replace` directives apply: it is built
# as the main module) and runs `CGO_ENABLED=0 go build` in its filebeat/ directory at low
# priority. The binary is cached as $CACHE_DIR/filebeat/filebeat-<version> with its sha256 beside
# it; a cached binary whose checksum still matches is reused, so `build` is idempotent. The Go
# module and build caches live under $CACHE_DIR/go, so a rebuild after the binary is gone costs
# seconds, not minutes. Go (GO_MIN_VERSION+) is a machine prerequisite of the tests: `check-go`
# (run by scripts/bootstrap.sh) says whether it is there; without it `build` fails saying so.
# Only the tests need this binary: the compose service and the Kubernetes DaemonSet run the
# official image with the same elk/filebeat/filebeat.yml.
# Progress goes to stderr; `build` and `path` print only the binary's path on stdout.
#
# Settings (environment): FILEBEAT_VERSION, GO (the go command), CACHE_DIR.
set -euo pipefail

LOG_PREFIX="filebeat.sh"
HOME_DIR_VAR="CACHE_DIR"
# Helpers (log, die), and the shared setting CACHE_DIR.
# shellcheck source-path=SCRIPTDIR source=lib/services.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/services.sh"

FILEBEAT_VERSION="${FILEBEAT_VERSION:-7.17.29}"
GO="${GO:-go}"
# beats v7.17.29's go.mod says `go 1.23.10`; GOTOOLCHAIN=local below forbids fetching a newer Go.
readonly GO_MIN_VERSION="1.23"
readonly MODULE="github.com/elastic/beats/v7"
readonly FB_DIR="$CACHE_DIR/filebeat"
readonly BINARY="$FB_DIR/filebeat-$FILEBEAT_VERSION"
readonly CHECKSUM="$BINARY.sha256"

# Caches under CACHE_DIR (never ~/go), no toolchain download, a module cache we can delete;
# Go's config (its telemetry files, ~/.config/go otherwise) under CACHE_DIR too, so even
# `make setup`'s version check writes nothing in the user's home.
go_env() {
  env GOMODCACHE="$CACHE_DIR/go/mod" GOCACHE="$CACHE_DIR/go/build" GOTOOLCHAIN=local \
    GOFLAGS=-modcacherw CGO_ENABLED=0 GOTELEMETRY=off XDG_CONFIG_HOME="$CACHE_DIR/go/config" "$@"
}

# --- go -------------------------------------------------------------------------------------

# Prints "1.26" for go1.26.8.
go_version() { go_env "$GO" env GOVERSION | sed -n 's/^go\([0-9]*\.[0-9]*\).*/\1/p'; }

require_go() {
  local have
  command -v "$GO" >/dev/null ||
    die "'$GO' not found: building Filebeat needs Go $GO_MIN_VERSION+ on PATH" \
      "(a machine prerequisite, see scripts/bootstrap.sh), or set GO=/path/to/go"
  have="$(go_version)"
  [[ -n "$have" ]] || die "cannot tell the version of $(go_env "$GO" version 2>&1)"
  [[ "$(printf '%s\n%s\n' "$GO_MIN_VERSION" "$have" | sort -V | head -n 1)" == "$GO_MIN_VERSION" ]] ||
    die "Filebeat $FILEBEAT_VERSION needs Go $GO_MIN_VERSION+, '$GO' is Go $have"
}

# --- build ----------------------------------------------------------------------------------

cached_binary_ok() {
  [[ -x "$BINARY" && -s "$CHECKSUM" ]] || return 1
  (cd "$FB_DIR" && sha256sum --check --status "$CHECKSUM")
}

# Prints the module's source directory in the module cache (read-only there).
download_module() {
  local dir
  # Outside any module, so `go mod download` fetches this one module, not its 3 GB of deps.
  dir="$(cd "$FB_DIR" && go_env "$GO" mod download -json "$MODULE@v$FILEBEAT_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$dir" ]] || die "go mod download of $MODULE@v$FILEBEAT_VERSION gave no source directory"
  printf '%s\n' "$dir"
}

# Build in a scratch copy and rename into place, so the cache only ever holds a whole binary.
compile() {
  local src="$1" work="$FB_DIR/.build.$$" started=$SECONDS
  rm -rf "$FB_DIR"/.build.*
  cp -R "$src" "$work"
  chmod -R u+w "$work"
  log "building Filebeat $FILEBEAT_VERSION with $(go_env "$GO" version | cut -d' ' -f3) (about 6 minutes on 2 cores the first time)"
  # -trimpath keeps the scratch directory's name out of the binary and of the build cache keys.
  (cd "$work/filebeat" && go_env nice -n 19 "$GO" build -trimpath -o "$work/filebeat.bin" .) ||
    {
      rm -rf "$work"
      die "go build of filebeat failed"
    }
  mv "$work/filebeat.bin" "$BINARY"
  rm -rf "$work"
  log "built in $((SECONDS - started))s"
}

build() {
  if cached_binary_ok; then
    log "cached: $BINARY"
    printf '%s\n' "$BINARY"
    return 0
  fi
  require_go
  mkdir -p "$FB_DIR"
  rm -f "$BINARY" "$CHECKSUM"
  compile "$(download_module)"
  "$BINARY" version | grep -q "filebeat version $FILEBEAT_VERSION" ||
    die "$BINARY does not report filebeat version $FILEBEAT_VERSION"
  (cd "$FB_DIR" && sha256sum "$(basename "$BINARY")" >"$CHECKSUM")
  log "sha256 $(cut -d' ' -f1 "$CHECKSUM")"
  printf '%s\n' "$BINARY"
}

path() {
  cached_binary_ok || die "no verified Filebeat $FILEBEAT_VERSION in $FB_DIR: run '$0 build'"
  printf '%s\n' "$BINARY"
}

main() {
  case "${1:-}" in
  build) build ;;
  path) path ;;
  version) printf '%s\n' "$FILEBEAT_VERSION" ;;
  check-go) require_go ;;
  *)
    printf 'usage: %s build|path|version|check-go\n' "$0" >&2
    exit 2
    ;;
  esac
}

main "$@"
