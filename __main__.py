"""MapSeg's engine from the command line, without QGIS (cluster nodes need only the engine).

    python -m mapseg segment INPUT MODEL OUTPUT [--scheduler tcp://host:8786] [options]
    python -m mapseg train CONFIG.json            (alone, or under torchrun for several GPUs)

``segment`` is Segment Raster (MODEL ``default`` or ``""``: the shipped default model); with
``--scheduler`` its blocks run on a Dask cluster. ``train`` is Train Model from a JSON file of
``core.train.job.TrainRequest`` fields (see ``core.distributed.ddp``). Exit status 1 with the
message on a MapSeg error, 130 on Ctrl-C (nothing is written then).
"""

from __future__ import annotations

import argparse
import sys


def segment_parser(sub) -> None:
    p = sub.add_parser("segment", help="Segment Raster (optionally on a Dask cluster)")
    p.add_argument("input", help="input raster: any GDAL path (the workers' path on a cluster)")
    p.add_argument("model", help="MapSeg .pt or .onnx model; 'default' for the shipped one")
    p.add_argument("output", help="class raster to write (GeoTIFF)")
    p.add_argument("--scheduler", default="", help="Dask scheduler address, e.g. tcp://h:8786")
    p.add_argument("--probability", default=None, help="also write this probability raster")
    p.add_argument("--num-segments", type=int, default=6, help="label-free models: segments")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (on workers)")
    p.add_argument("--tile-size", type=int, default=0)
    p.add_argument("--overlap", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--smoothing", type=int, default=0, help="minimum patch size in pixels")
    p.add_argument("--resolution", default="full", choices=["full", "medium", "low"])
    p.add_argument("--bands", default="", help="input bands fed to the model, e.g. 3,2,1")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: 8 views per tile")
    p.add_argument("--extent", default="", help="xmin,ymin,xmax,ymax in the input's CRS")
    p.add_argument("--block-size", type=int, default=0, help="cluster: block side (4096 px)")
    p.add_argument("--in-flight", type=int, default=0, help="cluster: blocks in flight")


def run_segment(args, reporter) -> None:
    from .core.infer.inputs import parse_bands
    from .core.infer.segment import Options, segment_raster

    options = Options(
        tile_size=args.tile_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        num_segments=args.num_segments,
        smoothing=args.smoothing,
        resolution=args.resolution,
        bands=parse_bands(args.bands),
        tta=args.tta,
    )
    model = None if args.model in ("", "default") else args.model
    extent = [float(v) for v in args.extent.split(",")] if args.extent else None
    kwargs = dict(probability=args.probability, extent=extent, options=options)
    if args.scheduler:
        from .core.distributed.dask_segment import Cluster, segment_on_cluster

        cluster = Cluster(args.scheduler, in_flight=args.in_flight)
        cluster.block_size = args.block_size or cluster.block_size
        result = segment_on_cluster(
            args.input, model, args.output, cluster, reporter=reporter, **kwargs
        )
    else:
        result = segment_raster(args.input, model, args.output, reporter=reporter, **kwargs)
    print(f"{result.output}: {result.tiles} tiles in {result.seconds:.1f} s ({result.runtime})")


def train_parser(sub) -> None:
    p = sub.add_parser("train", help="Train Model from a JSON config (alone or under torchrun)")
    p.add_argument("config", help="JSON file of Train Model's request (see core.distributed.ddp)")


def run_train(args, reporter) -> None:
    from .core.distributed.ddp import train_from_config

    path = train_from_config(args.config, reporter)
    if path:
        print(path)


class Progress:
    """Percent lines on stderr, one per 5 % step."""

    def __init__(self) -> None:
        self.last = -5.0

    def __call__(self, percent: float) -> None:
        if percent >= self.last + 5 or percent >= 100 > self.last:
            self.last = percent
            print(f"{percent:5.1f} %", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mapseg", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    segment_parser(sub)
    train_parser(sub)
    args = parser.parse_args(argv)
    from .core.errors import MapSegError
    from .core.progress import Reporter

    reporter = Reporter(progress=Progress(), log=lambda m: print(m, file=sys.stderr, flush=True))
    try:
        {"segment": run_segment, "train": run_train}[args.command](args, reporter)
    except MapSegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("canceled: nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
