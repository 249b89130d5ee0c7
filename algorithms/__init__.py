"""One QgsProcessingAlgorithm per module, named like the algorithm's ``name()``."""

from .evaluatesegmentation import EvaluateSegmentation
from .samautomaticmasks import SamAutomaticMasks
from .segmentwithsam import SegmentWithSam

ALGORITHMS = [
    EvaluateSegmentation,
    SegmentWithSam,
    SamAutomaticMasks,
]
