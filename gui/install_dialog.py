"""Plugins > MapSeg > Install dependencies...: the installer dialog.

A thin UI over ``python -m mapseg.install --events`` run in QGIS's own interpreter through a
QProcess (QGIS stays responsive; pip's log streams into the dialog): on opening it resolves the
package list and shows the download size, Install installs exactly that list into a new folder
that replaces the old one only when complete, Cancel stops pip and deletes the unfinished
folder, Remove deletes the installed packages. After an install the folder is put on
``sys.path`` so the algorithms run without restarting QGIS, unless an older copy of a package
is already loaded (then the dialog says a restart is needed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

from qgis.PyQt.QtCore import QProcess, QProcessEnvironment, Qt, QTimer, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
)

from ..install import activate, installed, remove
from ..install.cuda import cuda_builds, describe, driver_version
from ..install.folder import deactivate, discard
from ..install.interpreter import find_python
from ..install.pip import REQUIREMENTS, InstallError, human_size
from ..install.run import EVENT

PACKAGE = __package__.split(".")[0]  # "mapseg": the plugin folder's name
PLUGINS_DIR = Path(__file__).absolute().parents[2]  # the folder holding the plugin


def required_modules() -> tuple:
    """The modules the algorithms import (``REQUIRES``): ready once they all import."""
    from ..algorithms import ALGORITHMS

    return tuple(sorted({m for cls in ALGORITHMS for m in cls.REQUIRES}))


class InstallDialog(QDialog):
    """The installer. ``packages``/``pip_args``/``modules`` exist for tests (a small set)."""

    install_finished = pyqtSignal(bool)  # True: ready now; False: restart QGIS first

    def __init__(self, parent=None, target=None, packages=None, pip_args=None, modules=None):
        super().__init__(parent)
        from ..settings import dependency_folder

        self.target = Path(target) if target else dependency_folder()
        self.packages = list(packages or REQUIREMENTS)
        self.pip_args = list(pip_args or [])
        self.modules = tuple(modules if modules is not None else required_modules())
        self.process = None
        self.plan = None
        self.partial = None
        self.state = "idle"  # idle | resolving | installing | canceling
        scratch = Path(tempfile.gettempdir())
        self.cancel_file = scratch / f"mapseg-cancel-{os.getpid()}-{id(self)}"
        self.plan_file = scratch / f"mapseg-plan-{os.getpid()}-{id(self)}.json"
        self.setWindowTitle(self.tr("MapSeg: install dependencies"))
        self._build_ui()
        self.python = self._find_python()
        self._fill_builds()
        self._show_installed()
        if self.python:
            QTimer.singleShot(0, self.check_size)

    # -- layout ---------------------------------------------------------------------------

    def _build_ui(self) -> None:
        self.intro = QLabel(
            self.tr(
                "MapSeg's deep-learning algorithms need PyTorch and a few other Python packages. "
                "They are installed with QGIS's own Python into a folder of your QGIS profile; "
                "QGIS's numpy and GDAL are never replaced."
            )
        )
        self.intro.setWordWrap(True)
        self.python_label, self.folder_label = QLabel(), QLabel(str(self.target))
        self.status_label, self.size_label = QLabel(), QLabel(self.tr("Download size: -"))
        for label in (self.python_label, self.folder_label, self.status_label):
            label.setTextInteractionFlags(Qt.TextSelectableByMouse)
            label.setWordWrap(True)
        self.build_combo = QComboBox()
        self.build_combo.currentIndexChanged.connect(lambda _i: self.check_size())
        form = QFormLayout()
        form.addRow(self.tr("QGIS's Python"), self.python_label)
        form.addRow(self.tr("Folder"), self.folder_label)
        form.addRow(self.tr("Installed"), self.status_label)
        form.addRow(self.tr("PyTorch build"), self.build_combo)
        form.addRow(self.tr("Download"), self.size_label)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(5000)
        buttons = QDialogButtonBox()
        self.install_button = QPushButton(self.tr("Install"))
        self.cancel_button = QPushButton(self.tr("Cancel"))
        self.remove_button = QPushButton(self.tr("Remove"))
        self.close_button = QPushButton(self.tr("Close"))
        for button, role in (
            (self.install_button, QDialogButtonBox.AcceptRole),
            (self.cancel_button, QDialogButtonBox.RejectRole),
            (self.remove_button, QDialogButtonBox.DestructiveRole),
            (self.close_button, QDialogButtonBox.RejectRole),
        ):
            buttons.addButton(button, role)
        self.install_button.clicked.connect(self.start_install)
        self.cancel_button.clicked.connect(self.cancel)
        self.remove_button.clicked.connect(self.remove_installed)
        self.close_button.clicked.connect(self.close)
        layout = QVBoxLayout(self)
        for widget in (self.intro, form, self.progress, self.log, buttons):
            (layout.addLayout if widget is form else layout.addWidget)(widget)
        self.resize(720, 520)
        self._set_state("idle")

    def _find_python(self):
        try:
            python = find_python()
        except InstallError as err:
            self.python_label.setText(self.tr("not found"))
            self.log.appendPlainText(str(err))
            return None
        self.python_label.setText(str(python))
        return python

    def _fill_builds(self) -> None:
        self.build_combo.blockSignals(True)
        self.build_combo.addItem(self.tr("CPU"), "cpu")
        if "torch" in self.packages:
            driver = driver_version()
            for build in cuda_builds(driver):
                label = self.tr("{0} (NVIDIA driver {1})").format(describe(build), driver)
                self.build_combo.addItem(label, build)
            if driver and self.build_combo.count() > 1:
                self.build_combo.setCurrentIndex(1)  # the newest build the driver runs
            if sys.platform.startswith("linux"):  # where download.pytorch.org is out of reach
                label = self.tr("As the package index serves it (CUDA, larger download)")
                self.build_combo.addItem(label, "pypi")
        self.build_combo.blockSignals(False)

    def _show_installed(self) -> None:
        manifest = installed(self.target)
        if manifest is None:
            self.status_label.setText(self.tr("nothing yet"))
        else:
            text = self.tr("{0} package(s), PyTorch {1}, {2}").format(
                len(manifest.get("packages", [])),
                describe(manifest.get("build", "cpu")),
                manifest.get("installed", ""),
            )
            self.status_label.setText(text)
        self.remove_button.setEnabled(self.state == "idle" and self.target.exists())

    def _set_state(self, state: str) -> None:
        self.state = state
        busy = state != "idle"
        ready = getattr(self, "python", None) is not None
        self.install_button.setEnabled(not busy and ready)
        self.build_combo.setEnabled(not busy)
        self.cancel_button.setEnabled(state in ("resolving", "installing"))
        self.remove_button.setEnabled(not busy and self.target.exists())
        self.close_button.setEnabled(not busy)

    # -- running the installer -------------------------------------------------------------

    def _command(self, *extra) -> list:
        build = self.build_combo.currentData() or "cpu"
        args = ["-m", f"{PACKAGE}.install", "--events", "--target", str(self.target.parent)]
        args += ["--build", build, "--packages", *self.packages]
        for arg in self.pip_args:
            args.append(f"--pip-arg={arg}")
        return args + list(extra)

    def _start(self, args: list, state: str) -> None:
        self.cancel_file.unlink(missing_ok=True)
        self.process = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        paths = [str(PLUGINS_DIR)] + [p for p in env.value("PYTHONPATH", "").split(os.pathsep) if p]
        env.insert("PYTHONPATH", os.pathsep.join(paths))
        env.insert("PYTHONUNBUFFERED", "1")
        env.insert("PYTHONIOENCODING", "utf-8")  # read back as UTF-8 (Windows consoles: cp1252)
        self.process.setProcessEnvironment(env)
        self.process.setProcessChannelMode(QProcess.MergedChannels)
        self.process.readyReadStandardOutput.connect(self._read_output)
        self.process.finished.connect(self._finished)
        self._set_state(state)
        self.progress.setRange(0, 0 if state == "resolving" else 100)  # busy while resolving
        self.process.start(str(self.python), args)

    def check_size(self) -> None:
        """Resolve the package list and show the download size (nothing is downloaded)."""
        if self.python is None or self.state != "idle":
            return
        self.plan = None
        self.size_label.setText(self.tr("checking..."))
        self.log.appendPlainText(self.tr("Resolving the package list..."))
        self._start(self._command("--dry-run"), "resolving")

    def start_install(self) -> None:
        extra = []
        if self.plan is not None:
            self.plan_file.write_text(json.dumps(self.plan), encoding="utf-8")
            extra = ["--plan", str(self.plan_file)]
        self.progress.setValue(0)
        self.partial = None
        self.log.appendPlainText(self.tr("Installing into {0}...").format(self.target))
        self._start(self._command(*extra), "installing")

    def cancel(self) -> None:
        """Ask the installer to stop pip and clean up; kill it if it does not within 15 s."""
        if self.process is None or self.state not in ("resolving", "installing"):
            return
        self.log.appendPlainText(self.tr("Canceling..."))
        self.cancel_file.write_text("cancel", encoding="utf-8")
        self._set_state("canceling")
        QTimer.singleShot(15000, self._kill)

    def _kill(self) -> None:
        if self.process is not None and self.process.state() != QProcess.NotRunning:
            self.process.kill()

    def _read_output(self) -> None:
        data = bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        for line in data.splitlines():
            if line.startswith(EVENT + " "):
                kind, _, value = line[len(EVENT) + 1 :].partition(" ")
                self._event(kind, json.loads(value) if value else None)
            elif line.strip() and "is ignored: it is neither a file nor a directory" not in line:
                self.log.appendPlainText(line)

    def _event(self, kind: str, value) -> None:
        if kind == "progress":
            self.progress.setValue(int(value))
        elif kind == "plan":
            self.plan = value
        elif kind == "size":
            size, count = value
            text = self.tr("{0} in {1} package(s)").format(human_size(size), count)
            self.size_label.setText(text if count else self.tr("nothing to download"))
        elif kind == "partial":
            self.partial = Path(value)
        elif kind in ("step", "summary", "error"):
            self.log.appendPlainText(str(value))

    def _finished(self, code: int, _status=None) -> None:
        state, self.process = self.state, None
        self.cancel_file.unlink(missing_ok=True)
        self.plan_file.unlink(missing_ok=True)
        self.progress.setRange(0, 100)
        if self.partial is not None and self.partial.exists() and (code != 0):
            discard(self.partial)  # the installer was killed before it could clean up
        self._set_state("idle")
        self._show_installed()
        if state == "resolving" and code != 0:
            self.size_label.setText(self.tr("unknown (see the log)"))
        if state in ("installing", "canceling") and code == 0 and installed(self.target):
            self._installed()
        elif state == "canceling" or code == 130:
            self.progress.setValue(0)
            self.log.appendPlainText(self.tr("Canceled: nothing was installed."))

    def _installed(self) -> None:
        self.progress.setValue(100)
        # A module loaded before from elsewhere, now also in the folder, cannot be reloaded.
        stale = [m for m in self.modules if m in sys.modules and self._provides(m)]
        activate(self.target)
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        ready = not missing and not stale
        if ready:
            message = self.tr("Installed. MapSeg's algorithms are ready; no restart needed.")
        elif stale:
            message = self.tr("Installed. Restart QGIS to use the new {0}.").format(
                ", ".join(stale)
            )
        else:
            message = self.tr("Installed, but {0} cannot be imported; see the log.").format(
                ", ".join(missing)
            )
        self.log.appendPlainText(message)
        self.status_label.setText(message)
        self.install_finished.emit(ready)

    def _provides(self, module: str) -> bool:
        return (self.target / module).is_dir() or (self.target / f"{module}.py").is_file()

    def remove_installed(self) -> None:
        deactivate(self.target)
        if remove(self.target):
            self.log.appendPlainText(self.tr("Removed {0}.").format(self.target))
        else:
            self.log.appendPlainText(
                self.tr("{0} is in use; it will be deleted when QGIS restarts.").format(self.target)
            )
        self._show_installed()
        self._set_state("idle")

    def shutdown(self) -> None:
        """Stop whatever runs now (the plugin is unloading) and close."""
        if self.process is not None:
            self.cancel_file.write_text("cancel", encoding="utf-8")
            if not self.process.waitForFinished(15000):
                self.process.kill()
                self.process.waitForFinished(5000)
        self._set_state("idle")
        self.close()

    def closeEvent(self, event):  # noqa: N802 - Qt override
        if self.state != "idle":
            event.ignore()  # cancel first: never leave pip running behind a closed dialog
            return
        super().closeEvent(event)
