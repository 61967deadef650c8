#!/usr/bin/env bash
# A complete canary rollout on this machine: a real Kubernetes control plane (local, with fake
# nodes), a service split by one of the three traffic routers, a test-only traffic simulator
# turning the live split into the metrics a real data plane would report, a real Prometheus
# scraping it, and `canary controller`. Then, as a CI job would:
#   1. `canary run <service> --image <container>=<image>:2 --wait`  -> healthy, promoted (exit 0)
#   2. the next canary answers 30% of its requests with 503
#      `canary run <service> --image <container>=<image>:3 --wait`  -> rolled back (exit 1)
#
#   scripts/demo.sh [--router istio|gateway-api|replicas]
#     istio        deploy/examples/istio-canary.yaml: VirtualService weights over
#                  DestinationRule subsets, Istio's metrics (the default)
#     gateway-api  deploy/examples/gateway-api-canary.yaml: HTTPRoute backendRef weights
#     replicas     deploy/examples/replica-canary.yaml: no mesh, one Service, the split is
#                  the canary's share of the pods; the app's own metrics by pod
# Installs what it needs; stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

router=istio
while [ $# -gt 0 ]; do
    case "$1" in
        --router) router="${2:-}"; shift 2 ;;
        --router=*) router="${1#--router=}"; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
# Per router: the example, the Canary (and target) name, the container and its image, and what
# the simulator follows.
case "$router" in
    istio)
        example=deploy/examples/istio-canary.yaml service=web container=app image=web
        follow=(--virtual-service web) ;;
    gateway-api)
        example=deploy/examples/gateway-api-canary.yaml service=web container=app image=web
        follow=(--http-route web) ;;
    replicas)
        example=deploy/examples/replica-canary.yaml service=order-service
        container=order-service image=order-service follow=(--service order-service) ;;
    *) echo "--router must be istio, gateway-api or replicas, not '$router'" >&2; exit 2 ;;
esac

scripts/cluster deps
scripts/cluster build
echo "building canary and the traffic simulator"
cargo build --locked --quiet --workspace --bins

work=$(mktemp -d -t canary-demo-XXXXXX)
pids=()
started_cluster=""
namespace=demo
# A Canary's finalizer hands the service back; without a controller left to run it, a
# namespace being deleted would wait for ever. Leftovers of an interrupted run are let go.
release_canaries() {
    kubectl -n "$namespace" get canaries -o name 2>/dev/null | while read -r canary; do
        kubectl -n "$namespace" patch "$canary" --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
    done
}
cleanup() {
    # While the controller runs, deleting the Canary hands the service back properly.
    kubectl -n "$namespace" delete canaries --all --timeout=30s >/dev/null 2>&1 || release_canaries
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

echo "== the service ($router router): $example"
release_canaries
kubectl delete namespace "$namespace" --ignore-not-found --wait=true >/dev/null
kubectl create namespace "$namespace" >/dev/null
"$canary" validate "$example" >/dev/null
kubectl -n "$namespace" apply -f "$example"

echo "== traffic: 200 requests/s (${follow[*]}), metrics on /metrics"
"$binaries/canary-traffic-simulator" --namespace "$namespace" "${follow[@]}" \
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
"$canary" status "$service" -n "$namespace" --watch --exit-on-settle --timeout 2m >/dev/null
"$canary" status "$service" -n "$namespace"

echo
echo "== 1. a healthy image, as CI would roll it out"
echo "\$ canary run $service --image $container=$image:2 --wait"
"$canary" run "$service" -n "$namespace" --image "$container=$image:2" --wait
"$canary" status "$service" -n "$namespace"

echo
echo "== 2. a bad image: its pods answer 30% of requests with 503"
curl -fs -X PUT "http://$simulator/workloads/$service-canary" \
    -H 'content-type: application/json' -d '{"errorRate": 0.3}' >/dev/null
echo "\$ canary run $service --image $container=$image:3 --wait"
set +e
"$canary" run "$service" -n "$namespace" --image "$container=$image:3" --wait
code=$?
set -e
echo "(exit code $code: 1 means rolled back)"
"$canary" status "$service" -n "$namespace"
[ "$code" -eq 1 ] || { echo "expected the bad image to be rolled back"; exit 1; }
echo
echo "demo complete ($router router): $image:2 promoted, $image:3 rolled back; stable serves all traffic"
