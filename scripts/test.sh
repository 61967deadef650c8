#!/usr/bin/env bash
# The whole test suite, from a clean clone: installs what the tests need, then checks format,
# lints and runs every test. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests start for real (Prometheus with promtool; openssl for certificates).
scripts/install-packages.sh prometheus:prometheus promtool:prometheus openssl:openssl

# The local Kubernetes control plane, built from its Go modules once and cached in .cache/
# (cold: about 10 minutes on 2 cores; then seconds). Tests start and stop it themselves.
echo "== local control plane"
scripts/cluster deps
scripts/cluster build

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
