"""One QgsProcessingAlgorithm per module, named like the algorithm's ``name()``."""

from .evaluatesegmentation import EvaluateSegmentation
from .polygonizeclasses import PolygonizeClasses
from .samautomaticmasks import SamAutomaticMasks
from .segmentwithsam import SegmentWithSam

ALGORITHMS = [
    EvaluateSegmentation,
    PolygonizeClasses,
    SegmentWithSam,
    SamAutomaticMasks,
]
