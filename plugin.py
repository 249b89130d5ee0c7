"""Plugin shell: registers the Processing provider and nothing else (no GUI of its own)."""

from qgis.core import QgsApplication


class MapSegPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self):
        from .provider import MapSegProvider

        self.provider = MapSegProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
