#!/usr/bin/env bash
# Static release archives of postern for every target in scripts/targets.sh,
# with a SHA256SUMS file: dist/postern-VERSION-OS-ARCH.tar.gz (.zip for
# Windows). The Linux archives hold the daemon and the client; the others
# the client (the daemon's commands say they need Linux).
#   scripts/release.sh            # VERSION from git describe
#   VERSION=1.2.0 scripts/release.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/targets.sh
command -v zip >/dev/null || { apt-get update -qq && apt-get install -y -qq zip >/dev/null; }
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
out=dist/release
rm -rf "$out"
mkdir -p "$out"
for t in $TARGETS; do
  os=${t%/*} arch=${t#*/}
  name=postern-$VERSION-$os-$arch
  dir=$(mktemp -d)
  mkdir "$dir/$name"
  exe=postern
  [ "$os" = windows ] && exe=postern.exe
  GOOS=$os GOARCH=$arch CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$VERSION" \
    -o "$dir/$name/$exe" ./cmd/postern
  cp README.md "$dir/$name/"
  if [ "$os" = windows ]; then
    (cd "$dir" && zip -qr - "$name") >"$out/$name.zip"
  else
    tar -C "$dir" --owner=0 --group=0 -czf "$out/$name.tar.gz" "$name"
  fi
  rm -rf "$dir"
  echo "built $t"
done
(cd "$out" && sha256sum -- *.tar.gz *.zip >SHA256SUMS)
echo "archives and SHA256SUMS in $out"
