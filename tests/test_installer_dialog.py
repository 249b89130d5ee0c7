"""The dependency installer's dialog, offscreen: install, enable without restart, cancel,
remove, and the links that open it."""

from __future__ import annotations

import http.server
import re
import sys
import threading
import time
from pathlib import Path

from conftest import SCREENSHOTS
from wheels import HangingIndex, make_wheel

from mapseg.install import folder_for, installed
from mapseg.install.interpreter import find_python

# -- the dialog, offscreen --------------------------------------------------------------------


def wait_until(condition, timeout=120.0):
    from qgis.PyQt.QtTest import QTest

    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        QTest.qWait(20)


def probe_algorithm():
    from mapseg.algorithms.base import MapSegAlgorithm

    class NeedsProbe(MapSegAlgorithm):
        NAME, DISPLAY, GROUP, REQUIRES = "needsprobe", "Needs Probe", "Test", ("mapseg_probe",)

    return NeedsProbe()


def test_dialog_installs_enables_the_algorithm_without_restart_and_removes(qgis_app, tmp_path):
    from mapseg.install.folder import deactivate

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels)
    folder = folder_for(tmp_path / "root")
    alg = probe_algorithm()
    ok, message = alg.canExecute()
    assert not ok and 'href="mapseg:install"' in message and "mapseg_probe" in message

    dialog = probe_dialog(folder, wheels)
    ready = []
    dialog.install_finished.connect(ready.append)
    dialog.show()
    try:
        wait_until(lambda: dialog.state == "idle" and dialog.plan is not None)
        assert dialog.plan == [
            ["mapseg_probe", "1.0", (wheels / "mapseg_probe-1.0-py3-none-any.whl").stat().st_size]
        ]
        assert "1 package(s)" in dialog.size_label.text()
        assert str(dialog.python) == str(find_python())
        dialog.install_button.click()
        assert dialog.state == "installing" and not dialog.install_button.isEnabled()
        assert dialog.cancel_button.isEnabled() and not dialog.remove_button.isEnabled()
        wait_until(
            lambda: "Installing 1 package" in dialog.log.toPlainText() or dialog.state == "idle"
        )
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        assert dialog.grab().save(str(SCREENSHOTS / "mapseg_install_dialog.png"))
        wait_until(lambda: dialog.state == "idle")
        assert ready == [True], dialog.log.toPlainText()
        assert dialog.progress.value() == 100
        assert alg.canExecute() == (True, "")  # enabled in this process, no restart
        import mapseg_probe

        assert mapseg_probe.VALUE == 42
        assert Path(mapseg_probe.__file__).parent.parent == folder
        assert dialog.remove_button.isEnabled()
        dialog.remove_button.click()
        assert not folder.exists() and str(folder) not in sys.path
        assert "Removed" in dialog.log.toPlainText()
    finally:
        dialog.cancel()
        wait_until(lambda: dialog.state == "idle")
        dialog.close()
        deactivate(folder)
        sys.modules.pop("mapseg_probe", None)


def test_dialog_cancel_during_install_leaves_no_folder(qgis_app, tmp_path):
    from mapseg.gui.install_dialog import InstallDialog

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HangingIndex)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    folder = folder_for(tmp_path / "root")
    hanging = f"--find-links=http://127.0.0.1:{server.server_port}/"
    dialog = InstallDialog(
        target=folder,
        packages=["mapseg_probe"],
        modules=("mapseg_probe",),
        pip_args=["--no-index", hanging],
    )
    try:
        wait_until(lambda: dialog.state == "resolving")
        dialog.cancel()  # cancel the resolution (pip hangs on the index)
        wait_until(lambda: dialog.state == "idle", 60)
        dialog.plan = [["mapseg_probe", "1.0", 1000]]
        dialog.install_button.click()
        wait_until(lambda: dialog.partial is not None and dialog.partial.exists(), 60)
        time.sleep(0.5)
        dialog.cancel()
        wait_until(lambda: dialog.state == "idle", 60)
        assert "Canceled" in dialog.log.toPlainText()
        assert not (tmp_path / "root").exists()
    finally:
        dialog.close()
        server.shutdown()


def test_the_algorithm_message_link_and_the_menu_open_the_installer(qgis_app, qgis_iface, provider):
    from qgis.PyQt.QtCore import QUrl

    from mapseg.plugin import INSTALL_URL, MapSegPlugin

    plugin = MapSegPlugin(qgis_iface)
    plugin.initGui()
    try:
        assert plugin.action.text() == "Install dependencies..."
        # The Toolbox shows a disabled algorithm's canExecute message in Processing's
        # MessageDialog, whose links go through QDesktopServices: click the one in ours.
        from processing.gui.MessageDialog import MessageDialog

        ok, message = probe_algorithm().canExecute()
        href = re.search(r'href="([^"]+)"', message).group(1)
        assert not ok and href == INSTALL_URL
        box = MessageDialog()
        box.setMessage(message)
        assert "Install dependencies..." in box.txtMessage.toPlainText()
        box.txtMessage.anchorClicked.emit(QUrl(href))
        assert plugin.dialog is not None and plugin.dialog.isVisible()
        box.close()
        assert plugin.dialog.isModal()
        wait_until(lambda: plugin.dialog.state == "resolving", 60)  # the size is checked first
        plugin.dialog.cancel()
        wait_until(lambda: plugin.dialog.state == "idle", 60)
        plugin.dialog.close()
        plugin.action.trigger()  # Plugins > MapSeg > Install dependencies...
        assert plugin.dialog.isVisible()
    finally:
        plugin.unload()


def test_dialog_says_restart_when_an_older_copy_is_already_loaded(qgis_app, tmp_path):
    from mapseg.install.folder import deactivate

    wheels, elsewhere = tmp_path / "wheels", tmp_path / "elsewhere"
    wheels.mkdir()
    elsewhere.mkdir()
    make_wheel(wheels)
    (elsewhere / "mapseg_probe.py").write_text("VALUE = 1\n")  # an old copy, loaded first
    sys.path.insert(0, str(elsewhere))
    import mapseg_probe

    assert mapseg_probe.VALUE == 1
    folder = folder_for(tmp_path / "root")
    dialog = probe_dialog(folder, wheels)
    ready = []
    dialog.install_finished.connect(ready.append)
    try:
        wait_until(lambda: dialog.state == "idle" and dialog.plan is not None)
        dialog.install_button.click()
        wait_until(lambda: dialog.state == "idle")
        assert ready == [False]
        assert "Restart QGIS to use the new mapseg_probe" in dialog.status_label.text()
        assert installed(folder)["packages"] == ["mapseg_probe==1.0"]
    finally:
        dialog.close()
        deactivate(folder)
        sys.path.remove(str(elsewhere))
        sys.modules.pop("mapseg_probe", None)


def probe_dialog(folder, wheels):
    """The installer dialog set to install the test's probe package from local wheels only."""
    from mapseg.gui.install_dialog import InstallDialog

    return InstallDialog(
        target=folder,
        packages=["mapseg_probe"],
        modules=("mapseg_probe",),
        pip_args=["--no-index", f"--find-links={wheels}"],
    )
