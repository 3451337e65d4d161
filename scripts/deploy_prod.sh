#!/usr/bin/env bash
# Deploy to prod (`make deploy-prod`): any cluster the kubeconfig reaches, with
# k8s/overlays/prod and the image pinned by the digest `make docker-push` recorded, the one
# the dev stage ran and smoke-tested (jenkins/pipelines/deploy.Jenkinsfile).
#
#   1. check the tools, the kube context, the KubeRay CRD and the mlops-secrets Secret (prod
#      secrets are created once by an operator: k8s/overlays/prod/secrets.example.yaml);
#   2. write a kustomization over k8s/overlays/prod that pins IMAGE@sha256:... and apply it;
#   3. wait for MLflow's rollout and the RayService to be Ready;
#   4. smoke-test /health and one /predict through a port-forward.
#
# DRY_RUN=1 prints every command that changes something instead of running it.
# Settings (environment): KUBECONFIG, KUBE_CONTEXT (default: the kubeconfig's current one),
# IMAGE_DIGEST_FILE (default var/image-digest), NAMESPACE, LOCAL_PORT, WAIT_TIMEOUT, DRY_RUN,
# VAR_DIR.
set -euo pipefail

cd "$(dirname "$0")/.."

VAR_DIR="${VAR_DIR:-var}"
IMAGE_DIGEST_FILE="${IMAGE_DIGEST_FILE:-$VAR_DIR/image-digest}"
NAMESPACE="${NAMESPACE:-mlops}"
LOCAL_PORT="${LOCAL_PORT:-18001}"
WAIT_TIMEOUT="${WAIT_TIMEOUT:-900s}"
DRY_RUN="${DRY_RUN:-0}"
OVERLAY="k8s/overlays/prod"
RAYSERVICE="mlops-serving"
SECRET="mlops-secrets"
SMOKE_REQUEST="k8s/smoke/predict.json"
IMAGE_NAME_IN_BASE="mlops-serving"
REQUIRED_TOOLS=(kubectl curl)

# The cwd is the repo root (cd above).
# shellcheck source-path=SCRIPTDIR source=lib/smoke.sh
source scripts/lib/smoke.sh

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'deploy-prod: %s\n' "$*" >&2; exit "${2:-1}"; }
show() { printf '+'; printf ' %q' "$@"; printf '\n'; }
run() {
  if [ "$DRY_RUN" = 1 ]; then show "$@"; else "$@"; fi
}

require_tools() {
  local tool missing=()
  for tool in "${REQUIRED_TOOLS[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] || die "missing tool: ${missing[*]} (see docs/operations.md)" 2
}

# REPOSITORY@sha256:<64 hex>, exactly what `make docker-push` wrote.
read_image() {
  [ -s "$IMAGE_DIGEST_FILE" ] ||
    die "$IMAGE_DIGEST_FILE: missing or empty; run \`make docker-push\` first (it records the digest)" 2
  IMAGE_REF="$(<"$IMAGE_DIGEST_FILE")"
  [[ "$IMAGE_REF" =~ ^([a-z0-9.:/_-]+/[a-z0-9._/-]+)@(sha256:[0-9a-f]{64})$ ]] ||
    die "$IMAGE_DIGEST_FILE: expected REGISTRY/NAMESPACE/NAME@sha256:<64 hex>, got '$IMAGE_REF'" 2
  IMAGE_REPOSITORY="${BASH_REMATCH[1]}"
  IMAGE_DIGEST="${BASH_REMATCH[2]}"
}

kube() {
  if [ -n "${KUBE_CONTEXT:-}" ]; then kubectl --context "$KUBE_CONTEXT" "$@"; else kubectl "$@"; fi
}

check_cluster() {
  kube version >/dev/null 2>&1 ||
    die "no cluster reachable through the kubeconfig (KUBECONFIG=${KUBECONFIG:-~/.kube/config}, context ${KUBE_CONTEXT:-current})" 2
  kube get crd rayservices.ray.io >/dev/null 2>&1 ||
    die "the cluster has no KubeRay (CRD rayservices.ray.io): install the operator first (docs/operations.md)" 2
  kube -n "$NAMESPACE" get secret "$SECRET" >/dev/null 2>&1 ||
    die "Secret $NAMESPACE/$SECRET is missing: create it from $OVERLAY/secrets.example.yaml's keys" 2
}

# A kustomization over the prod overlay that pins the digest; kept under VAR_DIR (archived).
write_pinned_overlay() {
  local dir="$VAR_DIR/deploy-prod" base
  mkdir -p "$dir"
  base="$(realpath --relative-to="$dir" "$OVERLAY")"
  cat >"$dir/kustomization.yaml" <<YAML
# Written by scripts/deploy_prod.sh: $OVERLAY with the image dev ran, by digest.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $base
images:
  - name: $IMAGE_NAME_IN_BASE
    newName: $IMAGE_REPOSITORY
    digest: $IMAGE_DIGEST
YAML
  PINNED="$dir"
}

apply_and_wait() {
  say "applying $OVERLAY with $IMAGE_REPOSITORY@$IMAGE_DIGEST"
  run kube apply -k "$PINNED"
  run kube -n "$NAMESPACE" rollout status deployment/mlflow --timeout=600s
  run kube -n "$NAMESPACE" wait --for=condition=Ready "rayservice/$RAYSERVICE" --timeout="$WAIT_TIMEOUT"
}

smoke_test() { smoke_test_through_port_forward kube -n "$NAMESPACE"; }

main() {
  require_tools
  read_image
  if [ "$DRY_RUN" = 1 ]; then
    say "DRY_RUN: not checking the cluster"
  else
    check_cluster
  fi
  write_pinned_overlay
  apply_and_wait
  smoke_test
  say "prod runs $IMAGE_REPOSITORY@$IMAGE_DIGEST"
}

main "$@"
