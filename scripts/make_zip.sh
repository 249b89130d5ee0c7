#!/usr/bin/env bash
# Build dist/mapseg-<version>.zip for QGIS's "Install from ZIP" and the QGIS plugin repository.
#   make zip URL=https://github.com/<owner>/mapseg EMAIL=<maintainer's address>   (release)
#   make zip                                                                    (development)
# A release zip gets repository=URL, tracker=URL/issues, homepage=URL and the email written
# into its metadata.txt; a development zip drops those placeholder lines. Either way the zip is
# checked as the plugin repository checks uploads (mandatory metadata, no __pycache__/.pyc/.git,
# no tests or dev tooling, LICENSE present, size) and the build fails on any problem.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
URL=${URL:-}
EMAIL=${EMAIL:-}
DIST=${DIST:-$ROOT/dist}
VERSION=$(sed -n 's/^version=//p' metadata.txt)
mkdir -p "$DIST"
ZIP="$DIST/mapseg-$VERSION.zip"
rm -f "$ZIP"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
# Only what git tracks, under the folder name QGIS expects; tests and dev tooling stay out.
git archive --format=tar --prefix=mapseg/ HEAD | tar -x -C "$STAGE"
rm -rf "$STAGE/mapseg/tests" "$STAGE/mapseg/bench" "$STAGE/mapseg/.ci" "$STAGE/mapseg/scripts" \
  "$STAGE/mapseg/bin" "$STAGE/mapseg/Makefile" "$STAGE/mapseg/pyproject.toml" \
  "$STAGE/mapseg/.gitignore" "$STAGE/mapseg/DEVELOPING.md" "$STAGE/mapseg/docs"
python3 - "$STAGE/mapseg" "$ZIP" "$URL" "$EMAIL" <<'PY'
"""Write the release addresses into the staged metadata.txt, check, zip, report the size."""
import configparser
import re
import sys
import zipfile
from pathlib import Path

plugin, zip_path, url, email = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
MANDATORY = ("name", "description", "about", "version", "qgisMinimumVersion", "author",
             "email", "repository", "tracker")
MAX_BYTES = 25 * 1024 * 1024  # the plugin repository's upload limit
problems = []

meta_path = plugin / "metadata.txt"
lines = meta_path.read_text(encoding="utf-8").splitlines()
fields = {"repository": url, "tracker": url.rstrip("/") + "/issues" if url else "",
          "homepage": url, "email": email}
out = []
for line in lines:
    key = line.split("=", 1)[0]
    if line.startswith("#"):
        continue
    if key in fields and "example.org" in line:
        if fields[key]:
            out.append(f"{key}={fields[key]}")
        continue  # a placeholder never ships
    out.append(line)
meta_path.write_text("\n".join(out) + "\n", encoding="utf-8")

meta = configparser.ConfigParser()
meta.read(meta_path, encoding="utf-8")
general = meta["general"]
release = bool(url)
for key in MANDATORY if release else ("name", "description", "about", "version",
                                       "qgisMinimumVersion", "author"):
    if not general.get(key, "").strip():
        problems.append(f"metadata.txt: {key} is missing" + (" (give EMAIL=...)" if key == "email" else ""))
if release and not re.match(r"https?://", url):
    problems.append(f"URL={url} is not an http(s) address")
if "example.org" in meta_path.read_text(encoding="utf-8"):
    problems.append("metadata.txt still holds an example.org placeholder")
version = general.get("version", "")
if not general.get("changelog", "").startswith(version):
    problems.append(f"metadata.txt: the changelog does not start with version {version}")
changelog = (plugin / "CHANGELOG.md").read_text(encoding="utf-8")
if not re.search(rf"^## {re.escape(version)}\b", changelog, re.MULTILINE):
    problems.append(f"CHANGELOG.md has no '## {version}' entry")
for needed in ("LICENSE", "__init__.py", "requirements.txt", general.get("icon", "icon.svg")):
    if not (plugin / needed).is_file():
        problems.append(f"{needed} is missing")

names = []
for path in sorted(plugin.rglob("*")):
    rel = path.relative_to(plugin.parent).as_posix()
    if path.is_dir():
        continue
    if any(part in {"__pycache__", ".git", "__MACOSX", ".pytest_cache"} for part in path.parts) \
            or path.suffix in {".pyc", ".pyo"}:
        problems.append(f"{rel} must not be in the zip")
    names.append((path, rel))
if problems:
    sys.exit("make zip: " + "; ".join(problems))
with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
    for path, rel in names:
        zf.write(path, rel)
size = zip_path.stat().st_size
if size > MAX_BYTES:
    zip_path.unlink()
    sys.exit(f"make zip: {size / 1e6:.1f} MB is over the plugin repository's 25 MB limit")
kind = "release" if release else "development (no URL=: not for the plugin repository)"
print(f"{len(names)} files, {size / 1e6:.2f} MB, {kind}")
PY
echo "built $ZIP"
