#!/usr/bin/env bash
# Deploy the whole stack to Minikube in one command (`make deploy-minikube`), idempotently:
#
#   1. start Minikube (MINIKUBE_CPUS x MINIKUBE_MEMORY, Kubernetes KUBERNETES_VERSION) unless
#      it is running;
#   2. install or upgrade the KubeRay operator with Helm at KUBERAY_VERSION;
#   3. build IMAGE:TAG inside Minikube (no registry needed), or with MINIKUBE_IMAGE_SOURCE=docker
#      load IMAGE:TAG from the Docker engine (the image `make docker-push` pushed: the deploy
#      pipeline's dev stage runs the very image it then promotes to prod);
#   4. create the `mlops-secrets` Secret once (values from the environment, else random);
#   5. `kubectl apply -k k8s/overlays/minikube`, then wait for PostgreSQL, MLflow, the
#      training Job and the RayService to be ready;
#   6. smoke-test /health and one /predict through a port-forward, and print the URLs.
#
# DRY_RUN=1 prints every command that changes something instead of running it (read-only
# queries such as `minikube status` still run, to decide what would be done). Secret values
# are never printed. Everything runs against the Minikube profile's own kube context.
#
# Settings (environment): IMAGE, TAG, MINIKUBE_PROFILE, MINIKUBE_CPUS, MINIKUBE_MEMORY,
# KUBERNETES_VERSION, KUBERAY_VERSION, NAMESPACE, LOCAL_PORT, WAIT_TIMEOUT, DRY_RUN,
# MINIKUBE_IMAGE_SOURCE (build | docker),
# POSTGRES_PASSWORD, MLOPS_ADMIN_TOKEN, ELASTICSEARCH_USERNAME (default elastic) and
# ELASTICSEARCH_PASSWORD (default ELASTIC_PASSWORD, the compose stack's) (secrets, first deploy only).
set -euo pipefail

cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-mlops-serving}"
TAG="${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)}"
MINIKUBE_PROFILE="${MINIKUBE_PROFILE:-minikube}"
MINIKUBE_CPUS="${MINIKUBE_CPUS:-4}"
MINIKUBE_MEMORY="${MINIKUBE_MEMORY:-8g}"
KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.34.0}"
KUBERAY_VERSION="${KUBERAY_VERSION:-1.7.0}"
KUBERAY_CHARTS="https://ray-project.github.io/kuberay-helm/"
NAMESPACE="${NAMESPACE:-mlops}"
LOCAL_PORT="${LOCAL_PORT:-18000}"
WAIT_TIMEOUT="${WAIT_TIMEOUT:-900s}"
DRY_RUN="${DRY_RUN:-0}"
MINIKUBE_IMAGE_SOURCE="${MINIKUBE_IMAGE_SOURCE:-build}"
OVERLAY="k8s/overlays/minikube"
RAYSERVICE="mlops-serving"
SECRET="mlops-secrets"
TRAIN_JOB="mlops-train"
SMOKE_REQUEST="k8s/smoke/predict.json"
REQUIRED_TOOLS=(minikube kubectl helm curl)

# The cwd is the repo root (cd above).
# shellcheck source-path=SCRIPTDIR source=lib/smoke.sh
source scripts/lib/smoke.sh

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'deploy-minikube: %s\n' "$*" >&2; exit "${2:-1}"; }

# The command as it would run (shell-quoted), `--from-literal=key=value` values masked.
show() {
  local arg rest shown=()
  for arg in "$@"; do
    if [[ "$arg" == --from-literal=*=* ]]; then
      rest="${arg#--from-literal=}"
      arg="--from-literal=${rest%%=*}=REDACTED"
    fi
    shown+=("$arg")
  done
  printf '+'
  printf ' %q' "${shown[@]}"
  printf '\n'
}

# Commands that change something: printed under DRY_RUN=1, run otherwise.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    show "$@"
  else
    "$@"
  fi
}

KUBECTL=(kubectl --context "$MINIKUBE_PROFILE")
KN=("${KUBECTL[@]}" --namespace "$NAMESPACE")

require_tools() {
  local tool missing=()
  for tool in "${REQUIRED_TOOLS[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  for tool in "${missing[@]}"; do
    case "$tool" in
      minikube) printf 'deploy-minikube: minikube not found on PATH: install it from https://minikube.sigs.k8s.io/docs/start/\n' >&2 ;;
      kubectl) printf 'deploy-minikube: kubectl not found on PATH: "make setup" puts one in .venv/bin (make deploy-minikube uses it)\n' >&2 ;;
      helm) printf 'deploy-minikube: helm not found on PATH: install Helm 3 from https://helm.sh/docs/intro/install/\n' >&2 ;;
      curl) printf 'deploy-minikube: curl not found on PATH: apt-get install curl\n' >&2 ;;
    esac
  done
  [ "$DRY_RUN" = 1 ] && { say "DRY_RUN: continuing without ${missing[*]}"; return 0; }
  die "missing: ${missing[*]} (see docs/deploy.md, Prerequisites)" 2
}

# The overlay must deploy the image this run builds (`make manifests` writes image.yaml).
check_overlay_image() {
  local file="$OVERLAY/image.yaml" content
  content=$(<"$file")
  if [[ "$content" != *$'\n'"  newName: $IMAGE"$'\n'* || "$content" != *"  newTag: \"$TAG\""* ]]; then
    die "$file deploys another image than $IMAGE:$TAG: run \`make manifests IMAGE=$IMAGE TAG=$TAG\` first (make deploy-minikube does)" 2
  fi
}

start_minikube() {
  if minikube -p "$MINIKUBE_PROFILE" status >/dev/null 2>&1; then
    say "Minikube profile $MINIKUBE_PROFILE is running"
    return 0
  fi
  say "starting Minikube ($MINIKUBE_CPUS CPUs, $MINIKUBE_MEMORY, Kubernetes $KUBERNETES_VERSION)"
  run minikube start -p "$MINIKUBE_PROFILE" --cpus="$MINIKUBE_CPUS" --memory="$MINIKUBE_MEMORY" \
    --kubernetes-version="$KUBERNETES_VERSION"
}

install_kuberay() {
  say "KubeRay operator $KUBERAY_VERSION (Helm)"
  run helm repo add kuberay "$KUBERAY_CHARTS" --force-update
  run helm upgrade --install kuberay-operator kuberay/kuberay-operator \
    --version "$KUBERAY_VERSION" --namespace kuberay-system --create-namespace \
    --kube-context "$MINIKUBE_PROFILE" --wait --timeout 5m
}

build_image() {
  case "$MINIKUBE_IMAGE_SOURCE" in
  build)
    say "building $IMAGE:$TAG inside Minikube"
    run minikube -p "$MINIKUBE_PROFILE" image build -t "$IMAGE:$TAG" .
    ;;
  docker)
    say "loading $IMAGE:$TAG from the Docker engine into Minikube"
    run minikube -p "$MINIKUBE_PROFILE" image load "$IMAGE:$TAG"
    ;;
  *) die "MINIKUBE_IMAGE_SOURCE=$MINIKUBE_IMAGE_SOURCE: expected build or docker" 2 ;;
  esac
}

random_secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

create_secrets() {
  run "${KUBECTL[@]}" apply -f k8s/base/namespace.yaml
  if "${KN[@]}" get secret "$SECRET" >/dev/null 2>&1; then
    say "Secret $SECRET exists: keeping its values"
    return 0
  fi
  say "creating Secret $SECRET (values from the environment, else random)"
  run "${KN[@]}" create secret generic "$SECRET" \
    --from-literal=postgres-password="${POSTGRES_PASSWORD:-$(random_secret)}" \
    --from-literal=admin-token="${MLOPS_ADMIN_TOKEN:-$(random_secret)}" \
    --from-literal=elasticsearch-username="${ELASTICSEARCH_USERNAME:-elastic}" \
    --from-literal=elasticsearch-password="${ELASTICSEARCH_PASSWORD:-${ELASTIC_PASSWORD:-}}" \
    --from-literal=smtp-password="${SMTP_PASSWORD:-}"
}

# A Job's pod template is immutable: replace the training Job only when its image changed.
replace_stale_train_job() {
  local current
  current=$("${KN[@]}" get job "$TRAIN_JOB" -o 'jsonpath={.spec.template.spec.containers[0].image}' \
    2>/dev/null || true)
  if [ -n "$current" ] && [ "$current" != "$IMAGE:$TAG" ]; then
    say "training Job runs $current, not $IMAGE:$TAG: replacing it"
    run "${KN[@]}" delete job "$TRAIN_JOB" --wait=true
  fi
}

apply_and_wait() {
  say "applying $OVERLAY"
  run "${KUBECTL[@]}" apply -k "$OVERLAY"
  run "${KN[@]}" rollout status deployment/postgres --timeout=300s
  run "${KN[@]}" rollout status deployment/mlflow --timeout=300s
  say "waiting for the training Job (registers the model the RayService serves)"
  run "${KN[@]}" wait --for=condition=complete "job/$TRAIN_JOB" --timeout=1200s
  say "waiting for RayService $RAYSERVICE to be Ready (image start + model load: minutes)"
  run "${KN[@]}" wait --for=condition=Ready "rayservice/$RAYSERVICE" --timeout="$WAIT_TIMEOUT"
}

smoke_test() { smoke_test_through_port_forward "${KN[@]}"; }

print_urls() {
  cat <<EOF
Deployed to Minikube profile $MINIKUBE_PROFILE, namespace $NAMESPACE. Reach it with:
  kubectl --context $MINIKUBE_PROFILE -n $NAMESPACE port-forward svc/$RAYSERVICE-serve-svc 8000:8000
      model server  http://127.0.0.1:8000/docs   (/predict, /invocations, /health)
  kubectl --context $MINIKUBE_PROFILE -n $NAMESPACE port-forward svc/$RAYSERVICE-head-svc 8265:8265
      Ray dashboard http://127.0.0.1:8265
  kubectl --context $MINIKUBE_PROFILE -n $NAMESPACE port-forward svc/mlflow 5000:5000
      MLflow        http://127.0.0.1:5000
EOF
}

main() {
  require_tools
  check_overlay_image
  start_minikube
  install_kuberay
  build_image
  create_secrets
  replace_stale_train_job
  apply_and_wait
  smoke_test
  print_urls
}

main "$@"
