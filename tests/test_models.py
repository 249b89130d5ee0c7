"""The shipped Graphical Modeler models run through the real qgis_process."""

import numpy as np
from conftest import QGIS_PROCESS, ROOT, qgis_process_json, write_raster
from osgeo import ogr

MODELS = ROOT / "models"


def test_dem_sinks_to_polygons_model_runs_through_qgis_process(tmp_path):
    # A tilted plane (everything drains off its low edge) with two pits: a 3x3 pit lowered by
    # 2.6 m, which fills to its lowest rim cell (106.3 m) with every cell deeper than 0.5 m,
    # and a one-cell pit 0.05 m deep, which the model's minimum depth of 0.1 m leaves out.
    rows, cols = np.mgrid[0:40, 0:50]
    dem = 100.0 + 0.5 * rows + 0.2 * cols
    dem[10:13, 10:13] -= 2.6
    dem[25, 30] = dem[24, 29] - 0.05
    dem = dem.astype(np.float32)
    dem_path = write_raster(tmp_path / "dem.tif", dem, geotransform=(1000, 5, 0, 9000, 0, -5))
    out = tmp_path / "sinks.gpkg"
    result = qgis_process_json(
        str(MODELS / "dem_sinks_to_polygons.model3"),
        {"dem": dem_path, "min_depth": 0.1, "min_area": 0, "polygons:Sink polygons": out},
    )
    assert result["results"]["polygons:Sink polygons"] == str(out)
    ds = ogr.Open(str(out))
    layer = ds.GetLayer(0)
    areas = sorted(f.GetField("area") for f in layer)
    # The deep pit fills completely: 9 cells of 25 m2 each. Nothing else is deeper than 0.1 m.
    assert areas == [9 * 25.0]
    assert all(f.GetField("class") == 1 for f in layer)
    assert QGIS_PROCESS.exists()
