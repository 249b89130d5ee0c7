"""One QgsProcessingAlgorithm per module, named like the algorithm's ``name()``."""

from .evaluatesegmentation import EvaluateSegmentation
from .polygonizeclasses import PolygonizeClasses
from .samautomaticmasks import SamAutomaticMasks
from .segmentraster import SegmentRaster
from .segmentwithsam import SegmentWithSam
from .topographicsinks import TopographicSinks

ALGORITHMS = [
    EvaluateSegmentation,
    PolygonizeClasses,
    SegmentRaster,
    SegmentWithSam,
    SamAutomaticMasks,
    TopographicSinks,
]
