#!/usr/bin/env bash
# A complete canary rollout on this machine: a real Kubernetes control plane (local, with fake
# nodes), the service of deploy/examples/istio-canary.yaml behind an Istio VirtualService, a
# test-only traffic simulator turning the live weights into Istio metrics, a real Prometheus
# scraping it, and `canary controller`. Then, as a CI job would:
#   1. `canary run web --image app=web:2 --wait`  -> healthy, promoted (exit 0)
#   2. the next canary answers 30% of its requests with 503
#      `canary run web --image app=web:3 --wait`  -> rolled back (exit 1)
# Installs what it needs; stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/cluster deps
scripts/cluster build
echo "building canary and the traffic simulator"
cargo build --locked --quiet --workspace --bins

work=$(mktemp -d -t canary-demo-XXXXXX)
pids=()
started_cluster=""
namespace=demo
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "$started_cluster" ]; then
        scripts/cluster down >/dev/null 2>&1 || true
    else
        scripts/cluster kubectl delete namespace "$namespace" --wait=false >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if ! scripts/cluster status >/dev/null 2>&1; then
    started_cluster=yes
fi
scripts/cluster up >/dev/null
eval "$(scripts/cluster env)"
# Respect a CARGO_TARGET_DIR set by the caller (a CI cache, a shared build directory).
binaries="${CARGO_TARGET_DIR:-target}/debug"
canary="$binaries/canary"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for_url() {
    for _ in $(seq 1 300); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "$1 did not answer" >&2
    return 1
}

echo "== the service: Deployment web (web:1), DestinationRule, VirtualService, AnalysisTemplate, Canary"
kubectl delete namespace "$namespace" --ignore-not-found --wait=true >/dev/null
kubectl create namespace "$namespace" >/dev/null
"$canary" validate deploy/examples/istio-canary.yaml >/dev/null
kubectl -n "$namespace" apply -f deploy/examples/istio-canary.yaml

echo "== traffic: 200 requests/s through the VirtualService, Istio metrics on /metrics"
"$binaries/canary-traffic-simulator" --namespace "$namespace" --virtual-service web \
    --rps 200 --reporters destination >"$work/simulator.out" 2>"$work/simulator.log" &
pids+=($!)
for _ in $(seq 1 150); do grep -q "listening on" "$work/simulator.out" 2>/dev/null && break; sleep 0.2; done
simulator=$(sed -n 's|^listening on http://||p' "$work/simulator.out")
[ -n "$simulator" ] || { cat "$work/simulator.log"; exit 1; }

echo "== Prometheus scraping the simulator every second"
prometheus_port=$(free_port)
cat >"$work/prometheus.yml" <<YML
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: mesh
    static_configs: [{targets: ["$simulator"]}]
YML
mkdir -p "$work/tsdb"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prometheus_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)
wait_for_url "http://127.0.0.1:$prometheus_port/-/ready"

echo "== canary controller (logs in the demo's temporary folder)"
controller_port=$(free_port)
"$canary" controller --namespace "$namespace" --prometheus "http://127.0.0.1:$prometheus_port" \
    --listen "127.0.0.1:$controller_port" >"$work/controller.log" 2>&1 &
pids+=($!)
wait_for_url "http://127.0.0.1:$controller_port/readyz"
"$canary" status web -n "$namespace" --watch --timeout 2m >/dev/null
"$canary" status web -n "$namespace"

echo
echo "== 1. a healthy image, as CI would roll it out"
echo "\$ canary run web --image app=web:2 --wait"
"$canary" run web -n "$namespace" --image app=web:2 --wait
"$canary" status web -n "$namespace"

echo
echo "== 2. a bad image: its pods answer 30% of requests with 503"
curl -fs -X PUT "http://$simulator/workloads/web-canary" \
    -H 'content-type: application/json' -d '{"errorRate": 0.3}' >/dev/null
echo "\$ canary run web --image app=web:3 --wait"
set +e
"$canary" run web -n "$namespace" --image app=web:3 --wait
code=$?
set -e
echo "(exit code $code: 1 means rolled back)"
"$canary" status web -n "$namespace"
[ "$code" -eq 1 ] || { echo "expected the bad image to be rolled back"; exit 1; }
echo
echo "demo complete: web:2 promoted, web:3 rolled back; stable serves all traffic"
