"""`make zip` builds what QGIS's "Install from ZIP" and the QGIS plugin repository accept."""

import configparser
import os
import re
import subprocess
import zipfile

import pytest
from conftest import ROOT

URL = "https://github.com/mapseg-dev/mapseg"
# What plugins.qgis.org requires of an upload's metadata.txt.
MANDATORY = ("name", "description", "about", "version", "qgisMinimumVersion", "author", "email",
             "repository", "tracker")  # fmt: skip


def make_zip(tmp_path, **env) -> tuple:
    out = subprocess.run(
        ["make", "-s", "zip", *(f"{k}={v}" for k, v in env.items())], cwd=ROOT,
        env=dict(os.environ, DIST=str(tmp_path)), capture_output=True, text=True,
    )  # fmt: skip
    return out, tmp_path / f"mapseg-{version()}.zip"


def version() -> str:
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt")
    return meta["general"]["version"]


def zipped_metadata(zf: zipfile.ZipFile):
    meta = configparser.ConfigParser()
    meta.read_string(zf.read("mapseg/metadata.txt").decode("utf-8"))
    return meta["general"]


def test_release_zip_passes_the_plugin_repository_checks(tmp_path):
    out, path = make_zip(tmp_path, URL=URL, EMAIL="maintainers@mapseg.dev")
    assert out.returncode == 0, out.stderr + out.stdout
    size = path.stat().st_size
    assert re.search(rf"{size / 1e6:.2f} MB, release", out.stdout), out.stdout  # size reported
    assert size < 25 * 1024 * 1024
    zf = zipfile.ZipFile(path)
    assert zf.testzip() is None
    names = zf.namelist()
    assert {n.split("/")[0] for n in names} == {"mapseg"}  # one plugin folder, named for import
    for needed in (
        "mapseg/metadata.txt",
        "mapseg/__init__.py",
        "mapseg/provider.py",
        "mapseg/LICENSE",
        "mapseg/CHANGELOG.md",
        "mapseg/requirements.txt",  # the installer's requirement set
        "mapseg/install/__main__.py",
        "mapseg/gui/install_dialog.py",
        "mapseg/settings.py",
        "mapseg/weights/mapseg_default.pt",
        "mapseg/models/points_to_landcover.model3",
        "mapseg/algorithms/help/segmentraster.md",
    ):
        assert needed in names, needed
    forbidden = re.compile(r"(/__pycache__/|\.pyc$|\.pyo$|/\.git/|__MACOSX|/\.pytest_cache/)")
    assert not [n for n in names if forbidden.search(n)]
    dev = ("tests/", "bench/", ".ci/", "scripts/", "bin/", "Makefile", "pyproject.toml")
    assert not [n for n in names if n.startswith(tuple("mapseg/" + d for d in dev))]
    general = zipped_metadata(zf)
    for key in MANDATORY:
        assert general.get(key, "").strip(), key
    assert general["repository"] == URL and general["homepage"] == URL
    assert general["tracker"] == URL + "/issues"
    assert general["email"] == "maintainers@mapseg.dev"
    assert not [n for n in names if b"example.org" in zf.read(n)]  # no placeholder anywhere
    assert general["changelog"].startswith(general["version"])
    assert general["hasProcessingProvider"] == "yes"
    assert f"mapseg/{general['icon']}" in names


def test_development_zip_ships_no_placeholder_and_says_so(tmp_path):
    out, path = make_zip(tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "development" in out.stdout
    text = zipfile.ZipFile(path).read("mapseg/metadata.txt").decode()
    assert "example.org" not in text and "repository=" not in text


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"URL": URL}, "email is missing"),
        ({"URL": "github.com/x", "EMAIL": "a@b.c"}, "not an http"),
    ],
)
def test_release_zip_refuses_incomplete_metadata(tmp_path, env, message):
    out, path = make_zip(tmp_path, **env)
    assert out.returncode != 0 and message in out.stderr, out.stderr
    assert not path.exists()


def test_changelog_has_the_version_of_metadata():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(version())}\b", text, re.MULTILINE)
