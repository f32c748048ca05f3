#!/usr/bin/env bash
# Runs the official Azure SDK for Python against a fresh `kvsync dev-vault`.
# Usage: tests/sdk/run.sh path/to/kvsync
set -euo pipefail
bin="$1"
dir="$(mktemp -d)"
port=$(( 20000 + RANDOM % 20000 ))
# Certificate-backed secrets as Key Vault stores them (made at start).
cat >"$dir/seed.yaml" <<'EOF'
certificates:
  - {name: web-tls, commonName: web.example.test}
  - {name: api-tls, format: pem}
EOF
"$bin" dev-vault --addr "127.0.0.1:${port}" --seed "$dir/seed.yaml" --ca-out "$dir/ca.pem" >"$dir/exports" 2>"$dir/log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do
  grep -q '^export KVSYNC_CA_FILE' "$dir/exports" 2>/dev/null && break
  sleep 0.1
done
eval "$(grep '^export' "$dir/exports")"
python3 "$(dirname "$0")/python_sdk_check.py"
