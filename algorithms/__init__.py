"""One QgsProcessingAlgorithm per module, named like the algorithm's ``name()``."""

from .evaluatesegmentation import EvaluateSegmentation
from .polygonizeclasses import PolygonizeClasses
from .pseudolabelfrompoints import PseudolabelFromPoints
from .samautomaticmasks import SamAutomaticMasks
from .segmentraster import SegmentRaster
from .segmentwithsam import SegmentWithSam
from .topographicsinks import TopographicSinks
from .trainmodel import TrainModel

ALGORITHMS = [
    EvaluateSegmentation,
    PolygonizeClasses,
    PseudolabelFromPoints,
    SegmentRaster,
    SegmentWithSam,
    SamAutomaticMasks,
    TopographicSinks,
    TrainModel,
]
