"""One QgsProcessingAlgorithm per module, named like the algorithm's ``name()``."""

from .evaluatesegmentation import EvaluateSegmentation
from .exportmodel import ExportModel
from .polygonizeclasses import PolygonizeClasses
from .pseudolabelfrompoints import PseudolabelFromPoints
from .samautomaticmasks import SamAutomaticMasks
from .segmentraster import SegmentRaster
from .segmentwithsam import SegmentWithSam
from .topographicsinks import TopographicSinks
from .trainmodel import TrainModel

ALGORITHMS = [
    EvaluateSegmentation,
    ExportModel,
    PolygonizeClasses,
    PseudolabelFromPoints,
    SegmentRaster,
    SegmentWithSam,
    SamAutomaticMasks,
    TopographicSinks,
    TrainModel,
]
