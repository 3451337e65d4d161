# shellcheck shell=bash
# The smoke test both deploy scripts end with (scripts/deploy_minikube.sh, deploy_prod.sh):
# a port-forward to the RayService's serve service, /health until it answers, then /health and
# one /predict of k8s/smoke/predict.json. Sourced, never executed.
#
# The caller defines say, die and show, and sets DRY_RUN, LOCAL_PORT, RAYSERVICE and
# SMOKE_REQUEST. Arguments: the kubectl command to forward with, its context and namespace
# included (an array or a shell function).
smoke_test_through_port_forward() {
  local url="http://127.0.0.1:$LOCAL_PORT" attempt forward_pid
  say "smoke test through a port-forward on $url"
  if [ "$DRY_RUN" = 1 ]; then
    show "$@" port-forward "svc/$RAYSERVICE-serve-svc" "$LOCAL_PORT:8000"
    show curl -fsS "$url/health"
    show curl -fsS -X POST -H 'Content-Type: application/json' --data "@$SMOKE_REQUEST" \
      "$url/predict"
    return 0
  fi
  "$@" port-forward "svc/$RAYSERVICE-serve-svc" "$LOCAL_PORT:8000" >/dev/null 2>&1 &
  forward_pid=$!
  # shellcheck disable=SC2064  # expand the pid now: it is this port-forward's
  trap "kill $forward_pid 2>/dev/null || true" EXIT
  for ((attempt = 1; attempt <= 30; attempt++)); do
    curl -fsS -o /dev/null "$url/health" 2>/dev/null && break
    [ "$attempt" -eq 30 ] && die "$url/health did not answer through the port-forward"
    sleep 1
  done
  curl -fsS "$url/health"
  echo
  curl -fsS -X POST -H 'Content-Type: application/json' --data "@$SMOKE_REQUEST" "$url/predict"
  echo
}
