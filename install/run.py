"""The install, step by step, with progress events and cancel: shared by the CLI and the dialog.

The dialog runs ``python -m mapseg.install --events`` in QGIS's interpreter and reads the
events this module prints (lines starting with ``@mapseg``); pip's own output passes through as
the log. Cancel comes from a flag file (portable: Windows has no SIGTERM for console programs)
or Ctrl-C; either stops pip and deletes the unfinished folder.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable

from .folder import check_folder, cleanup, commit, discard, new_partial, write_manifest
from .interpreter import probe
from .pip import (
    InstallError,
    Package,
    Request,
    add_sizes,
    check_build,
    constraints,
    normalize,
    read_report,
    summary,
)

EVENT = "@mapseg"


class CanceledError(InstallError):
    """The user stopped the install."""


class Events:
    """Where progress, sizes and log lines go; ``machine`` prints them for the dialog."""

    def __init__(self, machine: bool = False, is_canceled: Callable[[], bool] = lambda: False):
        self.machine = machine
        self.is_canceled = is_canceled

    def emit(self, kind: str, value) -> None:
        if self.machine:
            print(f"{EVENT} {kind} {json.dumps(value)}", flush=True)
        elif kind in ("summary", "done", "step"):
            print(f"== {value}", flush=True)

    def log(self, line: str) -> None:
        print(line, flush=True)


def pip_env(root: Path) -> dict:
    """The environment for pip: this process's, without MapSeg's folder on PYTHONPATH (pip must
    resolve against what QGIS provides, not against a previous MapSeg install)."""
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    kept = [p for p in parts if not os.path.abspath(p).startswith(os.path.abspath(root))]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        env.pop("PYTHONPATH", None)
    return env


def stream(command: list, events: Events, env: dict, on_line=None) -> None:
    """Run ``command``, passing each output line to the log; stop it on cancel."""
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        bufsize=1,
    )
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True)
    reader.start()
    try:
        while proc.poll() is None or reader.is_alive() or not lines.empty():
            if events.is_canceled():
                raise CanceledError("CanceledError.")
            try:
                line = lines.get(timeout=0.2).rstrip()
            except queue.Empty:
                continue
            events.log(line)
            if on_line:
                on_line(line)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        raise InstallError(f"pip failed (exit code {proc.returncode}); see the log above.")


def resolve(request: Request, root: Path, events: Events, scratch: Path) -> tuple:
    """Step 1: what to download (``pip --dry-run --report``), with sizes. -> (info, packages)"""
    events.emit("step", f"Resolving {' '.join(request.requirements)} with {request.python}")
    info = probe(request.python, env=pip_env(root))
    pip = tuple(int(p) for p in re.findall(r"\d+", info.get("pip") or "0")[:2])
    if pip < (22, 2):  # --dry-run --report
        raise InstallError(
            f"{request.python} has pip {info.get('pip') or 'missing'}; the installer needs pip "
            f"22.2 or newer. Run `{request.python} -m pip install --upgrade pip`, then again."
        )
    (scratch / "constraints.txt").write_text(constraints(info), encoding="utf-8")
    report = scratch / "report.json"
    stream(request.resolve_command(report, scratch / "constraints.txt"), events, pip_env(root))
    packages = read_report(report)
    check_build(packages, request.build, request.platform)
    add_sizes(packages)
    events.emit("size", [sum(p.size or 0 for p in packages), len(packages)])
    events.emit("summary", summary(packages))
    events.emit("plan", [[p.name, p.version, p.size] for p in packages])
    return info, packages


def install_packages(request, packages, target, root, events, scratch) -> Path:
    """Step 2: ``pip install --no-deps --target <partial>`` of exactly the resolved list."""
    events.emit("step", f"Installing {len(packages)} package(s) into {target}")
    pins = scratch / "pins.txt"
    pins.write_text("".join(p.pin + "\n" for p in packages), encoding="utf-8")
    total = sum(p.size or 1 for p in packages) or 1
    done = {"bytes": 0, "seen": set()}

    def progress(line: str) -> None:
        text = normalize(line)
        for p in packages:  # pip prints "Collecting <pin>" or "Processing <wheel file>"
            keys = (normalize(p.pin), normalize(f"{p.name}-{p.version}"))
            if p.pin not in done["seen"] and any(k in text for k in keys):
                done["seen"].add(p.pin)
                events.emit("progress", round(90 * done["bytes"] / total))
                done["bytes"] += p.size or 1
        if line.startswith("Installing collected packages"):
            events.emit("progress", 92)

    partial = new_partial(target)
    events.emit("partial", str(partial))
    try:
        if packages:  # else QGIS's Python has it all: an empty folder records the install
            command = request.install_command(partial, pins, scratch / "constraints.txt")
            stream(command, events, pip_env(root), progress)
        check_folder(partial, packages)
    except BaseException:
        discard(partial)
        raise
    return partial


def install(
    request: Request, target: Path, events: Events, dry_run: bool = False, plan: list | None = None
) -> list:
    """Resolve, install into a new folder, check, switch it in as ``target``. -> packages"""
    target = Path(target)
    cleanup(target.parent)
    with tempfile.TemporaryDirectory(prefix="mapseg-install-") as tmp:
        scratch = Path(tmp)
        if plan is None or dry_run:
            info, packages = resolve(request, target.parent, events, scratch)
        else:  # the dialog resolved already and showed the size: install exactly that
            info = probe(request.python, env=pip_env(target.parent))
            (scratch / "constraints.txt").write_text(constraints(info), encoding="utf-8")
            packages = [Package(n, v, "", s) for n, v, s in plan]
        if dry_run:
            return packages
        partial = install_packages(request, packages, target, target.parent, events, scratch)
        try:
            if events.is_canceled():
                raise CanceledError("CanceledError.")
            manifest = {k: info.get(k) for k in ("version", "numpy", "gdal", "platform")}
            manifest.update(build=request.build, packages=[p.pin for p in packages])
            write_manifest(partial, manifest)
            commit(partial, target)
        except BaseException:
            discard(partial)
            raise
    events.emit("progress", 100)
    events.emit("done", str(target))
    return packages
