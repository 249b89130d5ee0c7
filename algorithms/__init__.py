"""One QgsProcessingAlgorithm per module, named like the algorithm's ``name()``."""

ALGORITHMS = []
