#!/usr/bin/env bash
# Re-create the front-end libraries the dashboard ships under src/hivecell/server/static/vendor/.
# Users never run this: the copied files are committed and ship in the wheel (no Node build).
# Maintainers run it to bump a version: edit the pins below, run, review the diff, commit.
#
# Needs npm (only `npm pack`, which downloads one tarball from the npm registry; nothing is
# installed and no package scripts run). Each tarball is checked against its pinned integrity.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=src/hivecell/server/static/vendor

# name@version  sha512 integrity as published in the registry (npm view <pkg>@<v> dist.integrity)
NOVNC="@novnc/novnc@1.7.0"
NOVNC_SHA512="sha512-ucEJOx4T2avIRCleodk7YobZj5O2Ga2AeLfQ69A/yjG9HHba2+PDgwSkN3FttrmG+70ZGx21sElNFouK13RzyA=="
XTERM="@xterm/xterm@6.0.0"
XTERM_SHA512="sha512-TQwDdQGtwwDt+2cgKDLn0IRaSxYu1tSUjgKarSDkUM0ZNiSRXFpjxEsvc/Zgc5kq5omJ+V0a8/kIM2WD3sMOYg=="
XTERM_FIT="@xterm/addon-fit@0.11.0"
XTERM_FIT_SHA512="sha512-jYcgT6xtVYhnhgxh3QgYDnnNMYTcf8ElbxxFzX0IZo+vabQqSPAjC3c1wJrKB5E19VwQei89QCiZZP86DCPF7g=="

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# fetch <spec> <integrity> -> unpacks into $work/<basename>/package
fetch() {
  local spec=$1 want=$2 dir
  dir="$work/$(echo "$spec" | tr '/@' '__')"
  mkdir -p "$dir"
  local tgz
  tgz=$(cd "$dir" && npm pack --silent "$spec" 2>/dev/null | tail -n 1)
  local got
  got="sha512-$(openssl dgst -sha512 -binary "$dir/$tgz" | base64 -w0)"
  if [ "$got" != "$want" ]; then
    echo "integrity mismatch for $spec: got $got" >&2
    exit 1
  fi
  tar -xzf "$dir/$tgz" -C "$dir"
  echo "$dir/package"
}

# noVNC: the RFB client as ES modules (core/) and the pako inflate/deflate it imports
# through relative paths (../vendor/pako/...), so the two folders keep their relative layout.
vendor_novnc() {
  local src out=$DEST/novnc
  src=$(fetch "$NOVNC" "$NOVNC_SHA512")
  rm -rf "$out"
  mkdir -p "$out/vendor"
  cp -r "$src/core" "$out/core"
  mkdir -p "$out/vendor/pako"
  cp -r "$src/vendor/pako/lib" "$out/vendor/pako/lib"
  cp "$src/vendor/pako/LICENSE" "$out/vendor/pako/LICENSE"
  cp "$src/LICENSE.txt" "$src/AUTHORS" "$out/"
  cp "$src"/docs/LICENSE.* "$out/"
  echo "$NOVNC" > "$out/VERSION"
}

# xterm.js for the Sessions page: the self-contained ES module builds (no imports), the
# stylesheet and the fit add-on; no source maps.
vendor_xterm() {
  local src fit out=$DEST/xterm
  src=$(fetch "$XTERM" "$XTERM_SHA512")
  fit=$(fetch "$XTERM_FIT" "$XTERM_FIT_SHA512")
  rm -rf "$out"
  mkdir -p "$out"
  cp "$src/lib/xterm.mjs" "$src/css/xterm.css" "$out/"
  cp "$src/LICENSE" "$out/LICENSE"
  cp "$fit/lib/addon-fit.mjs" "$out/"
  cp "$fit/LICENSE" "$out/LICENSE.addon-fit"
  printf '%s\n%s\n' "$XTERM" "$XTERM_FIT" > "$out/VERSION"
}

vendor_novnc
vendor_xterm
echo "vendored into $DEST:"
find "$DEST" -name VERSION -exec sh -c 'echo "  $(cat "$1")"' _ {} \;
