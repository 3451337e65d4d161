#!/usr/bin/env bash
# kube-score (github.com/zegl/kube-score), built once from its Go module, on the manifests.
#
#   scripts/kube_score.sh path              # build if needed; print the binary's path
#   scripts/kube_score.sh check OVERLAY...  # render each overlay, run the security checks
#
# `check` runs only kube-score's container security tests: read-only root filesystem,
# unprivileged, and the seccomp profile (optional in kube-score, enabled here); every other
# kube-score test (probes, PDBs, network policies ...) is ignored, so the exit status says
# whether the security checks pass. `container-security-context-user-group-id` is ignored too,
# with its reason: it wants UID/GID above 10000, and the images run as 1000 (the serving image,
# ElastAlert) and 999 (postgres); tests/contracts/test_security.py checks non-root itself.
# kube-score does not read the RayService (a custom resource): the contract test covers it.
# The binary is cached as $CACHE_DIR/kube-score/<version>/kube-score; the Go module and build
# caches live under $CACHE_DIR/go (shared with scripts/filebeat.sh). Go is a prerequisite of
# the tests (scripts/bootstrap.sh); without it `path` fails saying so.
#
# Settings (environment): KUBE_SCORE_VERSION, GO (the go command), KUBECTL, CACHE_DIR.
set -euo pipefail
LOG_PREFIX="kube_score.sh"
HOME_DIR_VAR="CACHE_DIR"
# Helpers (log, die), and the shared setting CACHE_DIR.
# shellcheck source-path=SCRIPTDIR source=lib/services.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/services.sh"

KUBE_SCORE_VERSION="${KUBE_SCORE_VERSION:-v1.20.0}"
GO="${GO:-go}"
KUBECTL="${KUBECTL:-kubectl}"
readonly BINARY="$CACHE_DIR/kube-score/$KUBE_SCORE_VERSION/kube-score"
readonly IGNORED="container-security-context-user-group-id"

binary() {
  if [[ ! -x "$BINARY" ]]; then
    command -v "$GO" >/dev/null || die "'$GO' not found: building kube-score needs Go on PATH"
    log "building kube-score $KUBE_SCORE_VERSION (once; cached in $(dirname "$BINARY"))"
    env GOMODCACHE="$CACHE_DIR/go/mod" GOCACHE="$CACHE_DIR/go/build" GOTOOLCHAIN=local \
      GOFLAGS=-modcacherw CGO_ENABLED=0 GOTELEMETRY=off XDG_CONFIG_HOME="$CACHE_DIR/go/config" \
      GOBIN="$(dirname "$BINARY")" nice "$GO" install \
      "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION" >&2 \
      || die "go install of kube-score $KUBE_SCORE_VERSION failed"
  fi
  echo "$BINARY"
}

# Every kube-score test except the container security ones (and the ignored UID check).
ignored_tests() {
  "$(binary)" list | cut -d, -f1 \
    | grep -v -x -e container-security-context-readonlyrootfilesystem \
      -e container-security-context-privileged -e container-seccomp-profile
}

check() {
  local overlay ignores=() test_name status=0
  [[ $# -gt 0 ]] || die "check: name at least one kustomize directory"
  while read -r test_name; do ignores+=(--ignore-test "$test_name"); done < <(ignored_tests)
  for overlay in "$@"; do
    log "$overlay (ignored: $IGNORED, UIDs below 10000 by design)"
    "$KUBECTL" kustomize "$overlay" | "$(binary)" score --output-format ci --exit-one-on-warning \
      --enable-optional-test container-seccomp-profile "${ignores[@]}" - || status=1
  done
  return "$status"
}

case "${1:-}" in
  path) binary ;;
  check) shift; check "$@" ;;
  *) die "usage: $0 path | check OVERLAY..." ;;
esac
