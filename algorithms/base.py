"""The short base class every MapSeg algorithm derives from.

It gives ``tr``, ``createInstance``, group and help (kept apart, in ``algorithms/help/<name>.md``),
a ``canExecute`` that names missing Python packages, and one place where engine errors become
``QgsProcessingException`` with the engine's own message.
"""

from __future__ import annotations

import html
import importlib.util
import re
from pathlib import Path

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputDefinition,
    QgsProcessingParameterEnum,
    QgsProperty,
)
from qgis.PyQt.QtCore import QCoreApplication

from ..core.errors import MapSegError
from ..core.io.gdal_errors import gdal_exceptions
from ..core.io.scratch import scratch_folder
from ..core.progress import Reporter
from .destinations import load_default_styles
from .params import setting_value

HELP_DIR = Path(__file__).resolve().parent / "help"

INSTALL_HINT = (
    'Install it from QGIS: Plugins > MapSeg > <a href="mapseg:install">Install dependencies...</a>'
    " (no restart needed). Without the desktop (qgis_process), run "
    "`python3 -m mapseg.install --target DIR` with QGIS's Python and set DIR as the dependency "
    "folder in Options > Processing > Providers > MapSeg (README, 'Install into QGIS desktop')."
)


def help_markdown(name: str) -> str:
    path = HELP_DIR / f"{name}.md"
    return path.read_text(encoding="utf-8") if path.exists() else ""


def markdown_to_html(text: str) -> str:
    """Just enough Markdown for Processing's help panel: paragraphs, bullets, code, bold."""

    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
        return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)

    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        if lines and lines[0].startswith("```"):
            out.append("<pre>" + html.escape("\n".join(lines[1:-1])) + "</pre>")
            continue
        if lines and lines[0].startswith("#"):
            out.append(f"<h3>{inline(lines[0].lstrip('#').strip())}</h3>")
            lines = lines[1:]
        items = [ln[2:] for ln in lines if ln.startswith("- ")]
        if items and len(items) == len(lines):
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>")
        elif lines:
            out.append("<p>" + inline(" ".join(ln.strip() for ln in lines)) + "</p>")
    return "\n".join(out)


def missing_modules(modules) -> list:
    return [m for m in modules if importlib.util.find_spec(m) is None]


class MapSegAlgorithm(QgsProcessingAlgorithm):
    """Subclasses set NAME, DISPLAY, GROUP and REQUIRES, and implement parameters/process."""

    NAME = ""
    DISPLAY = ""
    GROUP = ""
    # Python modules the algorithm needs beyond QGIS (pip names may differ: see PIP_NAMES).
    REQUIRES: tuple = ()
    PIP_NAMES = {
        "torch": "torch",
        "torchvision": "torchvision",
        "sklearn": "scikit-learn",
        "skimage": "scikit-image",
        "whitebox_workflows": "whitebox-workflows",
        "segment_anything": "segment-anything",
    }

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("MapSeg", text)

    def createInstance(self):
        return type(self)()

    def name(self) -> str:
        return self.NAME

    def displayName(self) -> str:
        return self.tr(self.DISPLAY)

    def group(self) -> str:
        return self.tr(self.GROUP)

    def groupId(self) -> str:
        return self.GROUP.lower().replace(" ", "")

    def shortHelpString(self) -> str:
        return markdown_to_html(help_markdown(self.NAME))

    def canExecute(self):
        missing = missing_modules(self.REQUIRES)
        if missing:
            pkgs = " ".join(self.PIP_NAMES.get(m, m) for m in missing)
            return False, (
                f"{self.displayName()} needs the Python package(s) {pkgs}, which QGIS's Python "
                "cannot import. " + INSTALL_HINT.format(pkgs=pkgs)
            )
        return True, ""

    def parameters(self) -> list:
        """The algorithm's parameters and outputs, in dialog order (see ``params``)."""
        return []

    def initAlgorithm(self, config=None):
        for item in self.parameters():
            if isinstance(item, QgsProcessingOutputDefinition):
                self.addOutput(item)
            else:
                self.addParameter(item)

    def checkParameterValues(self, parameters, context):
        """Choices are names: a wrong one gets a message that lists the valid names."""
        for param in self.parameterDefinitions():
            value = parameters.get(param.name())
            if (
                isinstance(param, QgsProcessingParameterEnum)
                and param.usesStaticStrings()
                and value not in (None, "")
                and not isinstance(value, QgsProperty)
                and str(value) not in param.options()
            ):
                valid = ", ".join(param.options())
                return False, (
                    f"{param.name()}={value} is not one of the valid names: {valid}. "
                    f"Pass the name, e.g. {param.name()}={param.options()[0]}."
                )
        return super().checkParameterValues(parameters, context)

    @staticmethod
    def reporter(feedback) -> Reporter:
        if feedback is None:
            return Reporter()
        return Reporter(
            progress=feedback.setProgress,
            is_canceled=feedback.isCanceled,
            log=feedback.pushInfo,
            warn=feedback.reportError
            if not hasattr(feedback, "pushWarning")
            else feedback.pushWarning,
        )

    def processAlgorithm(self, parameters, context, feedback):
        ok, message = self.canExecute()
        if not ok:
            raise QgsProcessingException(message)
        try:
            # GDAL exceptions for MapSeg's calls only, never process-wide
            with gdal_exceptions(), scratch_folder(setting_value("TEMP_FOLDER", "")):
                # outputs loaded by the dialog apply the style stored with the file
                return load_default_styles(context, self.process(parameters, context, feedback))
        except MapSegError as err:
            raise QgsProcessingException(str(err)) from None

    # Named ``process``, not ``run``: QgsProcessingAlgorithm.run is what processing.run and the
    # Toolbox dialog call, and a subclass must never hide it.
    def process(self, parameters, context, feedback) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- reading parameters ----------------------------------------------------------------

    @staticmethod
    def given(parameters, name: str) -> bool:
        """An optional parameter was given a value (not missing, None or empty)."""
        return parameters.get(name) not in (None, "")

    def optional_int(self, parameters, name: str, context) -> int | None:
        return (
            self.parameterAsInt(parameters, name, context) if self.given(parameters, name) else None
        )

    def optional_double(self, parameters, name: str, context) -> float | None:
        if not self.given(parameters, name):
            return None
        return self.parameterAsDouble(parameters, name, context)

    def optional_output(self, parameters, name: str, context) -> str | None:
        if not self.given(parameters, name):
            return None
        return self.parameterAsOutputLayer(parameters, name, context) or None

    def choice(self, parameters, name: str, context) -> str:
        """The name chosen for an enum parameter with static strings."""
        return self.parameterAsEnumString(parameters, name, context)

    # -- parameter helpers shared by several algorithms ------------------------------------

    def raster_source(self, parameters, name, context) -> str:
        """The file path GDAL should open for a raster layer parameter."""
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            raise QgsProcessingException(
                f"The raster given for {name} could not be loaded. Check the path or layer."
            )
        return self.gdal_path(layer)

    @staticmethod
    def gdal_path(layer) -> str:
        """A raster layer's source for GDAL; layers of other providers are refused clearly."""
        if layer.providerType() != "gdal":
            raise QgsProcessingException(
                f"The layer '{layer.name()}' comes from the '{layer.providerType()}' provider; "
                "MapSeg reads rasters through GDAL. Save it as a GeoTIFF first."
            )
        return layer.source()
