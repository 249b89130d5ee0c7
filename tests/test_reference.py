"""The help shown in the Toolbox and the README reference document every parameter."""

import re
import subprocess
import sys

from conftest import ROOT


def test_readme_reference_is_current():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_reference.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S)
    first = [line.strip() for line in blocks[0].splitlines() if line.strip()]
    assert first[:2] == ["make demo", "make test"]


def test_every_parameter_and_output_is_documented(provider):
    from qgis.core import QgsProcessingModelAlgorithm

    for alg in provider.algorithms():
        if isinstance(alg, QgsProcessingModelAlgorithm):
            continue  # shipped models carry their own help (see tests/test_models.py)
        help_file = ROOT / "algorithms" / "help" / f"{alg.name()}.md"
        assert help_file.exists(), f"{alg.id()} has no help file"
        text = help_file.read_text()
        documented = set(re.findall(r"^- `([A-Z_0-9]+)`", text, flags=re.M))
        params = {p.name() for p in alg.parameterDefinitions()}
        outputs = {o.name() for o in alg.outputDefinitions()}
        assert params - documented == set(), f"{alg.id()}: undocumented {params - documented}"
        assert outputs - documented == set(), f"{alg.id()}: undocumented {outputs - documented}"
        stale = documented - params - outputs
        assert not stale, f"{alg.id()}: help documents parameters that do not exist: {stale}"
        assert f"bin/qgis_process run {alg.id()}" in text, f"{alg.id()}: no example"
