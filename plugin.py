"""Plugin shell: the Processing provider, the installed-dependencies path hook, and the
Plugins > MapSeg > Install dependencies... menu entry.

Importing this module (QGIS does it through ``classFactory``, in the desktop and in
``qgis_process`` alike) puts MapSeg's dependency folder first on ``sys.path`` before any
algorithm runs. A ``mapseg:install`` link (the disabled algorithms' message has one) opens the
installer dialog.
"""

from __future__ import annotations

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtCore import QObject, QUrl, pyqtSlot
from qgis.PyQt.QtGui import QDesktopServices, QIcon
from qgis.PyQt.QtWidgets import QAction

INSTALL_URL = "mapseg:install"
MENU = "&MapSeg"


def add_dependency_path():
    """Put this Python version's MapSeg package folder on ``sys.path`` (first); None if none."""
    from importlib import metadata

    from .install import activate, cleanup, installed
    from .settings import dependency_folder

    folder = dependency_folder()
    cleanup(folder.parent)  # what a cancelled or replaced install left behind
    if not activate(folder):
        return None
    numpy = (installed(folder) or {}).get("numpy")
    try:
        current = metadata.version("numpy")
    except metadata.PackageNotFoundError:
        current = None
    if numpy and current and numpy != current:
        QgsMessageLog.logMessage(
            f"MapSeg's packages in {folder} were installed for numpy {numpy}; QGIS now has "
            f"numpy {current}. Reinstall them (Plugins > MapSeg > Install dependencies...).",
            "MapSeg",
            Qgis.Warning,
        )
    return folder


try:
    DEPENDENCY_FOLDER = add_dependency_path()
except Exception as err:  # never keep the plugin from loading; the algorithms say what is missing
    DEPENDENCY_FOLDER = None
    QgsMessageLog.logMessage(f"MapSeg dependency folder not used: {err}", "MapSeg", Qgis.Warning)


class UrlHandler(QObject):
    """Receives ``mapseg:`` links (QDesktopServices needs a QObject slot)."""

    def __init__(self, plugin):
        super().__init__()
        self.plugin = plugin

    @pyqtSlot(QUrl)
    def open(self, url):
        if url.toString() == INSTALL_URL:
            self.plugin.open_installer()


class MapSegPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.action = None
        self.dialog = None
        self.url_handler = None

    def initProcessing(self):
        from .provider import MapSegProvider

        self.provider = MapSegProvider()
        if not QgsApplication.processingRegistry().addProvider(self.provider):
            self.provider = None  # already registered (the registry deleted this one)

    def initGui(self):
        from .provider import HERE

        self.initProcessing()
        self.action = QAction(QIcon(str(HERE / "icon.svg")), "Install dependencies...", None)
        self.action.triggered.connect(self.open_installer)
        self.iface.addPluginToMenu(MENU, self.action)
        self.url_handler = UrlHandler(self)
        QDesktopServices.setUrlHandler("mapseg", self.url_handler, "open")

    def open_installer(self):
        """Show the installer (window-modal, so it also works above Processing's message)."""
        from .gui.install_dialog import InstallDialog

        if self.dialog is None:
            self.dialog = InstallDialog(self.iface.mainWindow() if self.iface else None)
            self.dialog.install_finished.connect(self._installed)
        self.dialog.setModal(True)
        self.dialog.show()
        self.dialog.raise_()
        return self.dialog

    def _installed(self, ready: bool):
        if self.provider is not None:
            self.provider.refreshAlgorithms()

    def unload(self):
        if self.url_handler is not None:
            QDesktopServices.unsetUrlHandler("mapseg")
            self.url_handler = None
        if self.action is not None:
            self.iface.removePluginMenu(MENU, self.action)
            self.action = None
        if self.dialog is not None:
            self.dialog.shutdown()
            self.dialog.deleteLater()
            self.dialog = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
