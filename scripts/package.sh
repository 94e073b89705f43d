#!/usr/bin/env bash
# Builds the Debian package: dist/postern_VERSION_ARCH.deb, holding the
# static binary, the systemd unit, the man pages and shell completions
# (generated from the binary itself), a commented /etc/postern/postern.toml
# (a conffile) and examples. nfpm, pinned, builds the archive.
#   scripts/package.sh                 # VERSION=0.3.0, this machine's architecture
#   VERSION=1.0.0 ARCH=arm64 scripts/package.sh
set -euo pipefail
cd "$(dirname "$0")/.."
case ":$PATH:" in *:/usr/local/go/bin:*) ;; *) PATH=/usr/local/go/bin:$PATH ;; esac
export VERSION=${VERSION:-0.3.0}
export ARCH=${ARCH:-$(go env GOARCH)}
BUILD=$(mktemp -d)
export BUILD
trap 'rm -rf "$BUILD"' EXIT
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
CGO_ENABLED=0 GOARCH=$ARCH go build -trimpath -buildvcs=false \
  -ldflags "-s -w -X main.version=$VERSION -X main.commit=$commit" -o "$BUILD/postern" ./cmd/postern
# Man pages and completions come from the binary (built for this machine
# when cross-building, so that it runs here).
gen=$BUILD/postern
if [ "$ARCH" != "$(go env GOARCH)" ]; then
  CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-X main.version=$VERSION" -o "$BUILD/postern-host" ./cmd/postern
  gen=$BUILD/postern-host
fi
"$gen" man "$BUILD/man"
gzip -9n "$BUILD"/man/*
mkdir -p "$BUILD/completion" dist
"$gen" completion bash >"$BUILD/completion/postern.bash"
"$gen" completion zsh >"$BUILD/completion/_postern"
"$gen" completion fish >"$BUILD/completion/postern.fish"
sed -e "s|\${BUILD}|$BUILD|g" -e "s|\${VERSION}|$VERSION|g" -e "s|\${ARCH}|$ARCH|g" packaging/nfpm.yaml >"$BUILD/nfpm.yaml"
go run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2 package --config "$BUILD/nfpm.yaml" \
  --packager deb --target "dist/postern_${VERSION}_${ARCH}.deb"
echo "dist/postern_${VERSION}_${ARCH}.deb"
