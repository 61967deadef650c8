#!/usr/bin/env bash
# The whole test suite, from a clean clone: installs what the tests need, then checks format,
# lints and runs every test. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# The local Kubernetes control plane, built from its Go modules once and cached in .cache/
# (cold: 10-15 minutes on 2 cores; then under a second). Started once for every test binary,
# stopped however the run ends.
echo "== local control plane"
# Debian packages the tests start for real: Prometheus with promtool, InfluxDB, graphite-web,
# VictoriaMetrics, openssl, curl.
scripts/cluster deps
scripts/cluster build
scripts/cluster up >/dev/null
# A control plane reused from an earlier run may hold older CRDs: install this tree's.
scripts/cluster crds
trap 'scripts/cluster down >/dev/null 2>&1 || true' EXIT

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
# The README's main job, with each router.
for router in istio gateway-api replicas; do
    echo "== the README's main job: scripts/demo.sh --router $router"
    bash scripts/demo.sh --router "$router"
done
