"""Parameter builders, so each algorithm's ``parameters()`` reads as its parameter list.

Every builder translates its label and returns the QGIS definition; ``advanced()`` marks a
tuning knob. Choices are enum parameters with static strings: values are names (``unet``,
``cpu``), which is what users type on the ``qgis_process`` command line and what keeps
``.model3`` files valid when options are added or reordered.
"""

from __future__ import annotations

from typing import Sequence

from qgis.core import (
    QgsProcessing,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)
from qgis.PyQt.QtCore import QCoreApplication

from ..core.model.device import DEVICES

Num = QgsProcessingParameterNumber
POLYGONS = [QgsProcessing.TypeVectorPolygon]
POINTS = [QgsProcessing.TypeVectorPoint]


def tr(text: str) -> str:
    return QCoreApplication.translate("MapSeg", text)


def advanced(param: QgsProcessingParameterDefinition) -> QgsProcessingParameterDefinition:
    param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return param


def integer(name, label, default=None, minimum=None, maximum=None, optional=False) -> Num:
    return _number(name, label, Num.Integer, default, minimum, maximum, optional)


def double(name, label, default=None, minimum=None, maximum=None, optional=False) -> Num:
    return _number(name, label, Num.Double, default, minimum, maximum, optional)


def _number(name, label, kind, default, minimum, maximum, optional) -> Num:
    param = Num(name, tr(label), kind, default, optional)
    if minimum is not None:
        param.setMinimum(minimum)
    if maximum is not None:
        param.setMaximum(maximum)
    return param


def choice(name, label, options: Sequence[str], default: str | None = None):
    """An enum whose values are the option names themselves (static strings)."""
    default = options[0] if default is None else default
    return QgsProcessingParameterEnum(name, tr(label), list(options), False, default, False, True)


def device(name: str = "DEVICE", default: str | None = None):
    """auto, cpu or cuda; the default comes from MapSeg's Processing settings."""
    return choice(name, "Device", DEVICES, default or setting_value("DEVICE", "auto"))


def setting_value(key: str, fallback):
    """A MapSeg Processing setting, or ``fallback`` when it is unset."""
    try:
        from .. import settings
    except ImportError:  # the settings page is optional (e.g. a trimmed install)
        return fallback
    value = settings.setting(key) if hasattr(settings, "setting") else None
    return value if value not in (None, "") else fallback


def flag(name, label, default: bool = False):
    return QgsProcessingParameterBoolean(name, tr(label), default)


def text(name, label, default: str | None = None, optional: bool = True):
    return QgsProcessingParameterString(name, tr(label), default, False, optional)


def raster(name, label, optional: bool = False):
    return QgsProcessingParameterRasterLayer(name, tr(label), optional=optional)


def rasters(name, label, optional: bool = False):
    return QgsProcessingParameterMultipleLayers(
        name, tr(label), QgsProcessing.TypeRaster, optional=optional
    )


def band(name, label, parent, multiple: bool = False):
    # Optional with default 1: QGIS 3.22's band parameter rejects a missing value even when it
    # has a default, so a required one would force every caller to pass the band.
    return QgsProcessingParameterBand(
        name, tr(label), None if multiple else 1, parent, True, multiple
    )


def features(name, label, types: Sequence[int], optional: bool = False):
    return QgsProcessingParameterFeatureSource(name, tr(label), list(types), optional=optional)


def field(name, label, parent, numeric: bool = False, optional: bool = True):
    kind = QgsProcessingParameterField.Numeric if numeric else QgsProcessingParameterField.Any
    return QgsProcessingParameterField(
        name, tr(label), parentLayerParameterName=parent, type=kind, optional=optional
    )


def file_in(name, label, file_filter: str, optional: bool = True):
    return QgsProcessingParameterFile(
        name,
        tr(label),
        behavior=QgsProcessingParameterFile.File,
        fileFilter=file_filter,
        optional=optional,
    )


def extent(name, label):
    return QgsProcessingParameterExtent(name, tr(label), optional=True)


def raster_out(name, label, optional: bool = False):
    return QgsProcessingParameterRasterDestination(
        name, tr(label), optional=optional, createByDefault=not optional
    )


def polygons_out(name, label, optional: bool = False):
    return QgsProcessingParameterVectorDestination(
        name, tr(label), QgsProcessing.TypeVectorPolygon, optional=optional,
        createByDefault=not optional,
    )  # fmt: skip


def table_out(name, label):
    return QgsProcessingParameterFeatureSink(name, tr(label), QgsProcessing.TypeVector)


def file_out(name, label, file_filter: str, optional: bool = False, create: bool = True):
    return QgsProcessingParameterFileDestination(
        name, tr(label), tr(file_filter), optional=optional, createByDefault=create
    )


def number_out(name, label):
    return QgsProcessingOutputNumber(name, tr(label))


def string_out(name, label):
    return QgsProcessingOutputString(name, tr(label))
