"""Which bands of the input feed the model when BANDS is empty: what users have just works.

A model with classes needs the bands it was trained on, so only an alpha band is set aside (an
RGBA orthophoto for an RGB model: the alpha band becomes the mask). A label-free model (the
shipped default) normalises every raster by its own statistics, so it takes any raster:

- 1 and 2 bands (panchromatic, grey + near-infrared, SAR VV/VH) are repeated to the model's
  band count (1 -> 1,1,1; 2 -> 1,2,1);
- an RGBA orthophoto feeds red, green and blue, and its alpha band masks the input (alpha 0 is
  nodata in the output);
- a multispectral raster feeds the bands GDAL tags red, green and blue (in that order), else
  its first bands, with a log line saying which.

Explicit BANDS, and rasters with exactly the model's band count, keep
``core.infer.inputs.model_bands``'s rules.
"""

from __future__ import annotations

from osgeo import gdal

from ..io.masks import alpha_band
from ..io.raster import open_raster
from ..progress import Reporter
from .inputs import model_bands

RGB = (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand)


def choose_bands(meta: dict, model_path: str, input_path: str, bands, reporter: Reporter):
    """The 1-based input bands fed to the model (see the module docstring)."""
    ds = open_raster(input_path)
    count, want = ds.RasterCount, int(meta["in_bands"])
    if bands or count == want:
        return model_bands(meta, model_path, count, bands, reporter)
    alpha = alpha_band(ds)
    data = [b for b in range(1, count + 1) if b != alpha]
    if alpha is not None:
        reporter.info(
            f"Band {alpha} is an alpha band: it is used as the mask (its 0 pixels are nodata "
            "in the output), not fed to the model."
        )
    if len(data) == want:
        return data
    if meta.get("mode") != "unsupervised":
        return model_bands(meta, model_path, count, bands, reporter)
    if len(data) < want:
        return repeated(data, want, reporter)
    return by_colour(ds, data, want, reporter)


def repeated(data: list[int], want: int, reporter: Reporter) -> list[int]:
    """``data`` repeated in turn up to ``want`` bands: [1] -> [1, 1, 1], [1, 2] -> [1, 2, 1]."""
    chosen = [data[i % len(data)] for i in range(want)]
    reporter.info(
        f"The raster has {len(data)} data band{'s' if len(data) != 1 else ''} and the "
        f"label-free model uses {want}: feeding it bands {','.join(map(str, chosen))}."
    )
    return chosen


def by_colour(ds: gdal.Dataset, data: list[int], want: int, reporter: Reporter) -> list[int]:
    """Red, green and blue by colour interpretation when the model takes 3 bands and the raster
    tags them; else the first ``want`` data bands (said in the log)."""
    tags = {ds.GetRasterBand(b).GetColorInterpretation(): b for b in data}
    if want == len(RGB) and all(c in tags for c in RGB):
        chosen = [tags[c] for c in RGB]
        reporter.info(
            f"The raster has {len(data)} data bands: feeding the label-free model its red, "
            f"green and blue bands ({','.join(map(str, chosen))}, by colour interpretation). "
            "Set BANDS to choose others."
        )
        return chosen
    chosen = data[:want]
    reporter.info(
        f"The raster has {len(data)} data bands and no red, green and blue colour "
        f"interpretation: feeding the label-free model its first {want} "
        f"({','.join(map(str, chosen))}). Set BANDS to choose others."
    )
    return chosen
