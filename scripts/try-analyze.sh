#!/usr/bin/env bash
# Try `canary analyze` on this machine: a real Prometheus holding one hour of a web app's
# metrics (0.2% errors for 30 minutes, then a regression to 5%), and the bundled generic
# template judged over a healthy window, over the regression, and on a workload that does
# not exist. Installs what it needs; leaves no process behind.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-packages.sh prometheus:prometheus promtool:prometheus python3:python3 curl:curl

echo "building canary (release)"
cargo build --release --locked --quiet
canary="${CARGO_TARGET_DIR:-target}/release/canary"

work=$(mktemp -d -t canary-try-XXXXXX)
prometheus_pid=""
cleanup() {
    if [ -n "$prometheus_pid" ]; then
        kill "$prometheus_pid" 2>/dev/null || true
        wait "$prometheus_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# One hour of data at a fixed past date, so the commands below are exact and repeatable.
start=1767225600 # 2026-01-01T00:00:00Z
python3 - "$start" >"$work/data.om.txt" <<'PY'
import sys
start = int(sys.argv[1])
pod = 'namespace="shop",pod="checkout-canary-7d9f8c6b5d-x2x9q"'
ok = errors = count = total = 0.0
rows = {"200": [], "503": [], "bucket": [], "sum": [], "count": []}
buckets = [(0.025, 0.2), (0.05, 0.6), (0.1, 0.95), (0.25, 0.999)]
for step in range(0, 3601, 15):
    t = start + step
    if step > 0:
        share = 0.05 if step >= 1800 else 0.002
        errors += 1500 * share
        ok += 1500 * (1 - share)
        count += 1500
        total += 1500 * 0.05
    rows["200"].append(f'http_requests_total{{{pod},code="200"}} {ok:.1f} {t}')
    rows["503"].append(f'http_requests_total{{{pod},code="503"}} {errors:.1f} {t}')
    rows["sum"].append(f'http_request_duration_seconds_sum{{{pod}}} {total:.3f} {t}')
    rows["count"].append(f'http_request_duration_seconds_count{{{pod}}} {count:.1f} {t}')
print("# TYPE http_requests counter")
print("\n".join(rows["200"] + rows["503"]))
print("# TYPE http_request_duration_seconds histogram")
for le, share in buckets + [("+Inf", 1.0)]:
    c = 0.0
    for step in range(0, 3601, 15):
        t = start + step
        c = 1500 * (step // 15) * share
        print(f'http_request_duration_seconds_bucket{{{pod},le="{le}"}} {c:.1f} {t}')
print("\n".join(rows["sum"] + rows["count"]))
print("# EOF")
PY
mkdir -p "$work/data"
promtool tsdb create-blocks-from openmetrics "$work/data.om.txt" "$work/data" >/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/prometheus.yml" <<YML
global: {scrape_interval: 15s}
YML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
    --storage.tsdb.retention.time=100y --web.listen-address="127.0.0.1:$port" \
    >"$work/prometheus.log" 2>&1 &
prometheus_pid=$!
url="http://127.0.0.1:$port"
for _ in $(seq 1 300); do
    curl -fs "$url/-/ready" >/dev/null 2>&1 && break
    kill -0 "$prometheus_pid" 2>/dev/null || { cat "$work/prometheus.log"; exit 1; }
    sleep 0.2
done
curl -fs "$url/-/ready" >/dev/null || { echo "Prometheus did not become ready"; exit 1; }
echo "Prometheus ready at $url with one hour of backfilled data"

run() {
    echo
    echo "\$ canary analyze -f analysis-templates/generic-http.yaml --prometheus $url $*"
    set +e
    "$canary" analyze -f analysis-templates/generic-http.yaml --prometheus "$url" "$@"
    echo "(exit code $?)"
    set -e
}
run --arg namespace=shop --arg workload=checkout-canary \
    --from 2026-01-01T00:05:00Z --to 2026-01-01T00:25:00Z
run --arg namespace=shop --arg workload=checkout-canary \
    --from 2026-01-01T00:28:00Z --to 2026-01-01T00:50:00Z
run --arg namespace=shop --arg workload=no-such-app \
    --from 2026-01-01T00:05:00Z --to 2026-01-01T00:25:00Z
