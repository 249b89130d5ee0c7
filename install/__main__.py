"""``python -m mapseg.install --target DIR [--cuda]``: MapSeg's dependencies without QGIS's GUI.

Run it with the Python QGIS uses (on a ``qgis_process`` server: the interpreter whose
``qgis`` module qgis_process loads). Packages go into ``DIR/python3.X``; point MapSeg at
``DIR`` with the provider setting "Dependency folder" or the ``MAPSEG_PACKAGES`` environment
variable. QGIS's numpy and GDAL bindings are never replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .cuda import CUDA_BUILDS, cuda_builds, describe, driver_version
from .folder import folder_for, remove
from .pip import REQUIREMENTS, InstallError, Request
from .run import CanceledError, Events, install

BUILDS = ["cpu", "pypi"] + [b[0] for b in CUDA_BUILDS]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mapseg.install", description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True, help="dependency folder (packages: DIR/python3.X)")
    p.add_argument("--cuda", action="store_true", help="the newest CUDA build the driver runs")
    p.add_argument("--build", choices=BUILDS, help="PyTorch build (default cpu; pypi: as served)")
    p.add_argument("--python", default=sys.executable, help="interpreter (default: this one)")
    p.add_argument("--packages", nargs="+", default=list(REQUIREMENTS), help=argparse.SUPPRESS)
    p.add_argument("--pip-arg", action="append", default=[], help="extra pip argument")
    p.add_argument("--dry-run", action="store_true", help="show what would be downloaded")
    p.add_argument("--plan", help="install this resolved list (JSON from --events)")
    p.add_argument("--remove", action="store_true", help="delete the installed packages")
    p.add_argument("--events", action="store_true", help="machine-readable progress (dialog)")
    p.add_argument("--cancel-file", help="stop and clean up as soon as this file exists")
    return p


def choose_build(args) -> str:
    if args.build:
        return args.build
    if not args.cuda:
        return "cpu"
    driver = driver_version()
    builds = cuda_builds(driver)
    if not builds:
        raise InstallError(
            "--cuda: nvidia-smi reports no NVIDIA driver that runs a PyTorch CUDA build "
            f"(driver: {driver or 'none'}). Install or update the driver, or leave out --cuda."
        )
    print(f"NVIDIA driver {driver}: PyTorch build {describe(builds[0])}", flush=True)
    return builds[0]


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    target = folder_for(Path(args.target).expanduser().absolute())
    if args.remove:
        print(("removed " if remove(target) else "will be removed at next start: ") + str(target))
        return 0
    cancel_file = args.cancel_file
    events = Events(args.events, lambda: bool(cancel_file) and os.path.exists(cancel_file))
    try:
        build = choose_build(args)
        request = Request(args.python, args.packages, build, sys.platform, args.pip_arg)
        plan = json.loads(Path(args.plan).read_text()) if args.plan else None
        install(request, target, events, dry_run=args.dry_run, plan=plan)
    except (CanceledError, KeyboardInterrupt):
        events.emit("error", "CanceledError: nothing was installed.")
        print("CanceledError: nothing was installed.", file=sys.stderr)
        return 130
    except InstallError as err:
        events.emit("error", str(err))
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
