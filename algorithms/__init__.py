"""One QgsProcessingAlgorithm per module, named like the algorithm's ``name()``."""

from .evaluatesegmentation import EvaluateSegmentation

ALGORITHMS = [
    EvaluateSegmentation,
]
