"""`make zip` builds what QGIS's "Install from ZIP" expects: one mapseg/ plugin folder."""

import subprocess
import zipfile

from conftest import ROOT


def test_plugin_zip_holds_the_plugin_and_not_the_dev_tooling():
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "make_zip.sh")], capture_output=True, text=True, check=True
    ).stdout
    path = out.strip().split()[-1]
    names = zipfile.ZipFile(path).namelist()
    assert all(n.startswith("mapseg/") for n in names)
    for needed in (
        "mapseg/metadata.txt",
        "mapseg/__init__.py",
        "mapseg/provider.py",
        "mapseg/LICENSE",
        "mapseg/weights/mapseg_default.pt",
        "mapseg/models/points_to_landcover.model3",
        "mapseg/algorithms/help/segmentraster.md",
    ):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("mapseg/tests/", "mapseg/bench/", "mapseg/.ci"))]
