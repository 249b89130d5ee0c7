#!/usr/bin/env bash
# Build dist/mapseg-<version>.zip for QGIS's "Install from ZIP" (plugin folder named mapseg/).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VERSION=$(sed -n 's/^version=//p' metadata.txt)
mkdir -p dist
ZIP="$ROOT/dist/mapseg-$VERSION.zip"
rm -f "$ZIP"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
# Only what git tracks, under the folder name QGIS expects; tests and dev tooling stay out.
git archive --format=tar --prefix=mapseg/ HEAD | tar -x -C "$STAGE"
rm -rf "$STAGE/mapseg/tests" "$STAGE/mapseg/bench" "$STAGE/mapseg/.ci" "$STAGE/mapseg/scripts" \
  "$STAGE/mapseg/bin" "$STAGE/mapseg/Makefile" "$STAGE/mapseg/pyproject.toml" "$STAGE/mapseg/.gitignore"
(cd "$STAGE" && python3 -m zipfile -c "$ZIP" mapseg >/dev/null)
echo "built $ZIP"
