#!/bin/sh
# Vendors the dashboard's charting library into broker/daemon/web/vendor/ so the
# build needs no network: fetches the pinned npm package with `npm pack`,
# checks its integrity against the pinned hash, copies the minified files.
# Run it only to upgrade: change VERSION and SHA512, run, commit the result.
set -eu
PKG=uplot
VERSION=1.6.32
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$PKG@$VERSION" >/dev/null)
tgz="$tmp/$PKG-$VERSION.tgz"
want=$(npm view "$PKG@$VERSION" dist.integrity 2>/dev/null)
got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
if [ "$want" != "$got" ]; then
    echo "vendor.sh: integrity mismatch for $PKG@$VERSION: registry $want, file $got" >&2
    exit 1
fi
tar -xzf "$tgz" -C "$tmp"
cp "$tmp/package/dist/uPlot.iife.min.js" vendor/uPlot.iife.min.js
cp "$tmp/package/dist/uPlot.min.css" vendor/uPlot.min.css
cp "$tmp/package/LICENSE" vendor/uPlot.LICENSE
printf '%s@%s %s\n' "$PKG" "$VERSION" "$got" > vendor/VERSIONS
echo "vendored $PKG@$VERSION into $(pwd)/vendor"
