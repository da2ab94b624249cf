#!/usr/bin/env bash
# Produces the OpenTelemetry collector of the tests from the Go module proxy, cached by version:
# Jaeger v2 (built on the OpenTelemetry Collector; OTLP over gRPC and HTTP in, its query API
# out), from `go get -tool github.com/jaegertracing/jaeger/cmd/jaeger` in a small module.
# Only a cold machine pays the build (a few minutes on 2 cores). Prints the binary's path.
set -euo pipefail
JAEGER_VERSION=${JAEGER_VERSION:-v1.75.0}
CACHE=${KEYGATE_JAEGER_CACHE:-$HOME/.cache/keygate/jaeger}
OUT="$CACHE/$JAEGER_VERSION"
BIN="$OUT/jaeger"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

if [ ! -x "$BIN" ]; then
  mkdir -p "$CACHE"
  work=$(mktemp -d "$CACHE/build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  echo "[jaeger/build] building jaeger $JAEGER_VERSION in $work (cold machine: minutes)" >&2
  (
    cd "$work"
    go mod init keygate.test/collector >/dev/null 2>&1
    go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION" >&2
    go build -trimpath -ldflags="-s -w" -o jaeger github.com/jaegertracing/jaeger/cmd/jaeger >&2
  )
  mkdir -p "$OUT"
  mv "$work/jaeger" "$BIN.tmp"
  mv "$BIN.tmp" "$BIN"
fi
echo "$BIN"
