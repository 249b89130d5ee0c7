"""Train Model's data without QGIS: labels and their classes, tiles, the spatial split."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_raster
from osgeo import gdal, ogr, osr
from trainscene import scene_files

from mapseg.core.errors import MapSegError
from mapseg.core.io.windows import BandWindows
from mapseg.core.labels import classes as lab
from mapseg.core.progress import Reporter
from mapseg.core.train.dataset import Tile, TileReader, scan_tiles, spatial_split
from mapseg.core.train.losses import class_weights


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return scene_files(tmp_path_factory.mktemp("train"))


def test_spatial_split_keeps_validation_apart():
    tiles = [
        Tile(r, min(x, w - 32), min(y, h - 32), 32, 32, x // 32, y // 32, {1: 10 + x % 7})
        for r, (w, h) in enumerate([(300, 200), (130, 250)])
        for y in range(0, h, 32)
        for x in range(0, w, 32)
    ]
    train, val = spatial_split(tiles, 0.25, seed=1)
    assert train and val and not set(train) & set(val)
    for i in train:
        for j in val:
            assert not tiles[i].overlaps(tiles[j]), (tiles[i], tiles[j])
    weight = np.array([sum(t.values.values()) for t in tiles], float)
    share = weight[val].sum() / weight.sum()
    assert 0.2 <= share <= 0.5
    # Validation tiles come as spatial blocks: every one has a validation neighbour.
    for j in val:
        t = tiles[j]
        assert any(
            tiles[k].raster == t.raster
            and abs(tiles[k].col - t.col) + abs(tiles[k].row - t.row) == 1
            for k in val
        )
    assert spatial_split(tiles, 0.25, seed=1) == (train, val)
    assert spatial_split(tiles, 0.0, seed=1) == (list(range(len(tiles))), [])


def test_spatial_split_keeps_most_of_a_rare_class_for_training():
    """Sparse labels: a rare class in 4 of 400 tiles. Whatever the seed, validation takes at
    most 30 % of its pixels (so never 2 of its 4 tiles) and still about 20 % of all pixels."""
    rare = {(3, 4), (10, 15), (16, 2), (18, 18)}
    tiles = [
        Tile(0, 32 * c, 32 * r, 32, 32, c, r, {1: 100, 2: 50} if (r, c) in rare else {1: 100})
        for r in range(20)
        for c in range(20)
    ]
    for seed in range(20):
        train, val = spatial_split(tiles, 0.2, seed=seed)
        rare_val = sum(tiles[i].values.get(2, 0) for i in val)
        assert rare_val <= 0.3 * 200, (seed, rare_val)
        assert sum(tiles[i].values.get(2, 0) for i in train) >= 0.7 * 200 - 50, seed
        share = sum(sum(tiles[i].values.values()) for i in val) / (100 * 400 + 200)
        assert 0.15 <= share <= 0.35, (seed, share)


def test_class_weights_favour_rare_classes():
    w = class_weights(np.array([9000, 1000, 0]))
    assert w[1] / w[0] == pytest.approx(3.0)  # inverse square-root frequency
    assert (w[:2] * [9000, 1000]).sum() / 10000 == pytest.approx(1.0)
    assert w[2] == 1.0
    assert np.all(class_weights(np.array([10**8, 1])) <= 10.0)


def test_label_raster_on_another_grid_is_resampled(tmp_path, data):
    # Labels at 20 m covering a larger extent, shifted by one 20 m cell to the north-west.
    coarse = np.zeros((66, 66), np.uint8)
    coarse[1:65, 1:65] = data["cls"][::2, ::2]
    gt = (500000.0 - 20, 20.0, 0.0, 4000000.0 + 20, 0.0, -20.0)
    lab_path = write_raster(tmp_path / "coarse.tif", coarse, geotransform=gt, nodata=0)
    log = []
    layer = lab.label_raster(lab_path, gdal.Open(data["img_path"]), 255, Reporter(log=log.append))
    arr = layer.dataset.ReadAsArray()
    assert arr.shape == (128, 128)
    assert np.array_equal(arr, np.repeat(np.repeat(data["cls"][::2, ::2], 2, 0), 2, 1))
    assert any("nearest neighbour" in m for m in log)


def test_text_class_field_is_numbered_or_matched_on_class_names(tmp_path):
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    path = str(tmp_path / "poly.gpkg")
    vds = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    layer = vds.CreateLayer("poly", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("kind", ogr.OFTString))
    for kind in ("water", "Forest ", "water", " ", "O'Hare"):
        feat = ogr.Feature(layer.GetLayerDefn())
        feat.SetField("kind", kind)
        feat.SetGeometry(ogr.CreateGeometryFromWkt(
            "POLYGON((12.0 36.1,12.1 36.1,12.1 36.2,12.0 36.2,12.0 36.1))"))  # fmt: skip
        layer.CreateFeature(feat)
    vds = None
    # no CLASSES: 1, 2, ... over the sorted texts, as Pseudo-label From Points numbers them
    plan = lab.polygon_classes(path, "kind", [])
    assert plan["numbered"] and plan["names"] == {1: "Forest", 2: "O'Hare", 3: "water"}
    assert sorted(v for _, v in plan["burn"]) == [1, 2, 3]  # the blank text is no class
    assert ("\"kind\" = 'O''Hare'", 2) in plan["burn"]  # quotes escaped for OGR SQL
    # CLASSES names them, case-insensitively; a text that no class names is refused
    given = lab.parse_classes("4:WATER:#0000ff, 7:forest, 9:o'hare")
    plan = lab.polygon_classes(path, "kind", given)
    assert not plan["numbered"] and sorted(v for _, v in plan["burn"]) == [4, 7, 9]
    with pytest.raises(MapSegError, match=r"holds text \(Forest \) that matches no class"):
        lab.polygon_classes(path, "kind", lab.parse_classes("4:water, 9:o'hare"))


def test_parse_classes():
    table = lab.parse_classes("1:water:#1f78b4, 2:forest; 5")
    assert table == [
        {"value": 1, "name": "water", "color": [31, 120, 180]},
        {"value": 2, "name": "forest"},
        {"value": 5, "name": ""},
    ]
    built = lab.build_classes([1, 2, 5], table, names={5: "urban"})
    assert [c["name"] for c in built] == ["water", "forest", "urban"]
    assert built[0]["color"] == [31, 120, 180] and len({tuple(c["color"]) for c in built}) == 3
    for bad in ("x:water", "1:a:#12", "1:a, 1:b"):
        with pytest.raises(MapSegError):
            lab.parse_classes(bad)


def test_class_names_and_colours_come_from_the_label_raster(tmp_path, data):
    lab_path = write_raster(
        tmp_path / "named.tif",
        data["cls"],
        nodata=0,
        color_table={1: (0, 0, 255), 2: (0, 128, 0), 3: (200, 0, 0)},
        category_names=["", "water", "forest", "urban"],
    )
    layer = lab.label_raster(lab_path, gdal.Open(data["img_path"]), 255, Reporter())
    assert layer.unlabelled == [0.0, 255.0]
    table = lab.build_classes([1, 2, 3], [], layer.names, layer.colors)
    assert [(c["value"], c["name"], c["color"]) for c in table] == [
        (1, "water", [0, 0, 255]),
        (2, "forest", [0, 128, 0]),
        (3, "urban", [200, 0, 0]),
    ]


def test_tile_reader_pads_small_rasters(tmp_path):
    img = np.arange(2 * 20 * 24, dtype=np.float32).reshape(2, 20, 24)
    cls = np.ones((20, 24), np.uint8)
    cls[:, :12] = 2
    ip = write_raster(tmp_path / "i.tif", img)
    lp = write_raster(tmp_path / "l.tif", cls)
    ds = gdal.Open(ip)
    layers = [lab.label_raster(lp, ds, 255, Reporter())]
    tiles = scan_tiles([ds], layers, 32, Reporter())
    assert len(tiles) == 1 and (tiles[0].w, tiles[0].h) == (24, 20)
    stats = [{"offset": 0.0, "scale": 1000.0, "low": 0.0, "high": 1000.0}] * 2
    x, y = np.empty((2, 32, 32), np.float32), np.empty((32, 32), np.int64)
    TileReader([ds], layers, [1, 2], stats, 32).read(tiles[0], x, y)
    assert np.allclose(x[:, :20, :24], np.clip(img, 0, 1000) / 1000.0)
    assert (x[:, 20:, :] == 0).all() and (y[20:, :] == -1).all() and (y[:, 24:] == -1).all()
    assert (y[:20, :12] == 1).all() and (y[:20, 12:24] == 0).all()


def test_a_band_missing_in_a_strip_is_zeroed_alone_in_training_and_inference(tmp_path):
    """Nodata in one band zeroes that band only (the others stay context, as for a Landsat
    thermal band covering less ground), its labels are ignored, and Train Model's tiles are
    exactly Segment Raster's. A high nodata value (255) must not read as the band's maximum."""
    rng = np.random.default_rng(0)
    img = rng.integers(10, 200, size=(3, 24, 30)).astype(np.uint8)
    img[2, :, 18:] = 255  # band 3 has no data on the right
    img[:, 20:, :4] = 255  # no band has data in the bottom-left corner
    cls = np.ones((24, 30), np.uint8)
    ip = write_raster(tmp_path / "i.tif", img, nodata=255)
    lp = write_raster(tmp_path / "l.tif", cls)
    ds = gdal.Open(ip)
    layers = [lab.label_raster(lp, ds, 0, Reporter())]
    stats = [{"offset": 10.0, "scale": 190.0, "low": 10.0, "high": 200.0}] * 3
    x, y = np.empty((3, 32, 32), np.float32), np.empty((32, 32), np.int64)
    tile = scan_tiles([ds], layers, 32, Reporter())[0]
    TileReader([ds], layers, [1], stats, 32).read(tile, x, y)
    inferred, ok = BandWindows(ds, stats).read((0, 0, 30, 24))
    assert np.array_equal(x[:, :24, :30], inferred)
    expected = (np.clip(img.astype(np.float32), 10, 200) - 10) / 190
    expected[img == 255] = 0.0
    assert np.allclose(inferred, expected, atol=1e-6)
    assert (inferred[:2, :20, 18:] > 0).any()  # bands 1-2 kept where band 3 is missing
    assert not ok[:, 18:].any() and not ok[20:, :4].any() and ok[:20, :18].all()
    assert (y[:24, :30][~ok] == -1).all() and (y[:24, :30][ok] == 0).all()


def test_labels_outside_an_explicit_mask_count_nowhere(tmp_path):
    """A GDAL mask band (no nodata value): labels it hides are neither counted nor read, and a
    tile whose labels all lie outside it is no tile (it would make a batch with no label)."""
    img = np.random.default_rng(1).integers(10, 200, size=(2, 40, 64)).astype(np.uint8)
    ip = write_raster(tmp_path / "i.tif", img)
    ds = gdal.Open(ip, gdal.GA_Update)
    ds.CreateMaskBand(gdal.GMF_PER_DATASET)
    mask = np.full((40, 64), 255, np.uint8)
    mask[:, 32:] = 0  # the right-hand tiles hold no data
    mask[:10, :8] = 0  # and a corner of the left-hand one
    ds.GetRasterBand(1).GetMaskBand().WriteArray(mask)
    ds = None
    cls = np.ones((40, 64), np.uint8)
    cls[:, 16:] = 2
    lp = write_raster(tmp_path / "l.tif", cls)
    ds = gdal.Open(ip)
    layers = [lab.label_raster(lp, ds, 0, Reporter())]
    tiles = scan_tiles([ds], layers, 32, Reporter())
    assert sorted((t.x, t.y) for t in tiles) == [(0, 0), (0, 8)]  # no tile at x = 32
    top = next(t for t in tiles if t.y == 0)
    assert top.values == {1: 16 * 32 - 10 * 8, 2: 16 * 32}
    stats = [{"offset": 0.0, "scale": 255.0, "low": 0.0, "high": 255.0}] * 2
    x, y = np.empty((2, 32, 32), np.float32), np.empty((32, 32), np.int64)
    TileReader([ds], layers, [1, 2], stats, 32).read(top, x, y)
    assert int((y == 0).sum()) == top.values[1] and int((y == 1).sum()) == top.values[2]
    assert (y[:10, :8] == -1).all() and (x[:, :10, :8] == 0).all()
