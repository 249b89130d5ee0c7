"""ONNX Runtime inference: MapSeg exports, Deepness-format models, segmenting without PyTorch."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest
from conftest import qgis_process, read_raster, run_alg, write_raster
from osgeo import gdal
from scenes import GT
from segment_models import blobs, regions

from mapseg.core.io.raster import read_classes

# Deepness model made here: a per-pixel (1x1) network, so its classes are known exactly
MEAN, STD = [0.2, 0.3, 0.4], [0.5, 0.6, 0.7]
NAMES = {"0": "water", "1": "field", "2": "forest"}
WEIGHTS = np.array([[0.0, 0.0, 4.0], [4.0, 4.0, -4.0], [-3.0, 4.0, -1.0]], np.float32)
BIAS = np.array([0.0, -2.0, 0.5], np.float32)
SEG_THRESH = 0.6  # Deepness: probabilities below it are zeroed before the argmax
HIDDEN = ("torch", "torchvision", "sklearn", "scipy", "skimage", "onnx", "segment_anything")


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """Exports land in a test folder, never in the user's cache."""
    old = os.environ.get("MAPSEG_CACHE_DIR")
    os.environ["MAPSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield os.environ["MAPSEG_CACHE_DIR"]
    if old is None:
        os.environ.pop("MAPSEG_CACHE_DIR", None)
    else:
        os.environ["MAPSEG_CACHE_DIR"] = old


def deepness_model(path, tile=48, props=None, single=False) -> str:
    """A Deepness-format segmentation model: softmax(1x1 conv), fixed tile, Deepness metadata."""
    import onnx
    import torch

    conv = torch.nn.Conv2d(3, 1 if single else 3, 1)
    with torch.no_grad():
        conv.weight[:] = torch.from_numpy(WEIGHTS[:1] if single else WEIGHTS)[..., None, None]
        conv.bias[:] = torch.from_numpy(BIAS[:1] if single else BIAS)
    head = torch.nn.Sigmoid() if single else torch.nn.Softmax(dim=1)
    net = torch.nn.Sequential(conv, head).eval()
    torch.onnx.export(
        net, torch.zeros(1, 3, tile, tile), str(path), dynamo=False, input_names=["x"],
        output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17,
    )  # fmt: skip
    model = onnx.load(str(path))
    meta = {
        "model_type": "Segmentor",
        "class_names": NAMES if not single else {"0": "background", "1": "roof"},
        "resolution": 1000,  # cm per pixel: 10 m, the rasters' pixel size
        "tiles_size": tile,
        "tiles_overlap": 25,
        "standardization_mean": MEAN,
        "standardization_std": STD,
        "seg_thresh": SEG_THRESH,
    }
    meta.update(props or {})
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(model, str(path))
    return str(path)


def deepness_truth(img: np.ndarray, single=False) -> np.ndarray:
    x = (img.astype(np.float64) / 255.0 - np.array(MEAN)[:, None, None]) / np.array(STD)[
        :, None, None
    ]
    logits = np.einsum("kc,chw->khw", WEIGHTS, x) + BIAS[:, None, None]
    if single:
        return (1.0 / (1.0 + np.exp(-logits[0])) >= SEG_THRESH).astype(np.uint8)
    probs = np.exp(logits - logits.max(axis=0))
    probs /= probs.sum(axis=0)
    probs[probs < SEG_THRESH] = 0.0  # no class sure enough: class 0
    return probs.argmax(axis=0)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    img, truth = regions(150, 170, seed=3)
    src = write_raster(d / "regions.tif", img, geotransform=GT)
    return {"dir": d, "img": img, "truth": truth, "src": src}


@pytest.fixture(scope="module")
def deepness(scene):
    return deepness_model(scene["dir"] / "deepness.onnx")


def test_deepness_model_uses_its_normalisation_tile_and_classes(scene, deepness, tmp_path):
    dest = str(tmp_path / "classes.tif")
    proc = qgis_process("segmentraster", {"INPUT": scene["src"], "MODEL": deepness,
                                          "OUTPUT": dest})  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "tiles of 48 px, overlap 12" in proc.stdout  # tiles_size 48, tiles_overlap 25 %
    assert "ONNX Runtime" in proc.stdout
    out = read_raster(dest)
    expect = deepness_truth(scene["img"])
    assert (out == expect).mean() >= 0.999, (out == expect).mean()
    assert len(np.unique(expect)) == 3  # the check would catch a wrong normalisation
    ds = gdal.Open(dest)
    colors, names = read_classes(ds.GetRasterBand(1))
    assert [names[i] for i in range(3)] == ["water", "field", "forest"]
    assert len({colors[i] for i in range(3)}) == 3
    assert ds.GetGeoTransform() == pytest.approx(GT)


def test_deepness_single_channel_is_two_classes_and_wrong_tile_is_refused(
    provider, scene, tmp_path
):
    model = deepness_model(tmp_path / "roof.onnx", tile=32, single=True)
    dest = str(tmp_path / "roof.tif")
    res = run_alg("segmentraster", {"INPUT": scene["src"], "MODEL": model, "OUTPUT": dest})
    out = read_raster(res["OUTPUT"])
    expect = deepness_truth(scene["img"], single=True)
    assert (out == expect).mean() >= 0.999 and 0.05 < expect.mean() < 0.95
    from qgis.core import QgsProcessingException

    bad = str(tmp_path / "bad.tif")
    with pytest.raises(QgsProcessingException, match="tiles of 32 x 32 pixels only"):
        run_alg("segmentraster", {"INPUT": scene["src"], "MODEL": model, "TILE_SIZE": 64,
                                  "OUTPUT": bad})  # fmt: skip
    assert not os.path.exists(bad)


@pytest.fixture(scope="module")
def trained(provider, tmp_path_factory):
    d = tmp_path_factory.mktemp("trained")
    img, truth = blobs(160, 160, seed=5)
    src = write_raster(d / "img.tif", img, geotransform=GT)
    lab = write_raster(d / "lab.tif", truth + 1, nodata=0, geotransform=GT)
    model = str(d / "model.pt")
    run_alg("trainmodel", {
        "INPUT": [src], "LABELS": [lab], "CLASSES": "1:ground:#604020, 2:blob:#f0d020",
        "ARCHITECTURE": "unet", "ARCH_OPTIONS": "base_width=4", "EPOCHS": 6, "TILE_SIZE": 32,
        "BATCH_SIZE": 4, "LEARNING_RATE": 0.02, "OUTPUT_MODEL": model,
    })  # fmt: skip
    scene_img, _ = blobs(130, 190, seed=9)
    scene = write_raster(d / "scene.tif", scene_img, geotransform=GT)
    return {"dir": d, "model": model, "scene": scene}


def test_exported_model_segments_like_the_pytorch_model(trained, tmp_path):
    import onnxruntime as ort

    onnx_path = str(tmp_path / "model.onnx")
    proc = qgis_process("exportmodel", {"MODEL": trained["model"], "OUTPUT": onnx_path})
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert json.loads(proc.stdout[proc.stdout.index("{") :])["results"]["MAX_DIFFERENCE"] < 1e-3
    props = ort.InferenceSession(onnx_path).get_modelmeta().custom_metadata_map
    assert json.loads(props["model_type"]) == "Segmentor"
    assert json.loads(props["class_names"]) == {"0": "ground", "1": "blob"}
    assert json.loads(props["tile_size"]) == 32 and json.loads(props["resolution"]) == 1000
    assert json.loads(props["mapseg"])["classes"][1]["name"] == "blob"

    outs = {}
    for name, model, runtime in (("onnx", onnx_path, ""), ("pt", trained["model"], "torch")):
        outs[name] = str(tmp_path / f"{name}.tif")
        proc = qgis_process("segmentraster", {"INPUT": trained["scene"], "MODEL": model,
                                              "OUTPUT": outs[name]},
                            env={"MAPSEG_RUNTIME": runtime})  # fmt: skip
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert ("ONNX Runtime" if name == "onnx" else "PyTorch") in proc.stdout
    a, b = read_raster(outs["onnx"]), read_raster(outs["pt"])
    assert (a == b).mean() >= 0.999, (a == b).mean()
    assert 0.05 < (a == 2).mean() < 0.7  # both classes: a constant map would not test much
    da, db = gdal.Open(outs["onnx"]), gdal.Open(outs["pt"])
    assert da.GetGeoTransform() == db.GetGeoTransform() and da.GetProjection() == db.GetProjection()
    ca, cb = da.GetRasterBand(1).GetColorTable(), db.GetRasterBand(1).GetColorTable()
    assert [ca.GetColorEntry(i) for i in (1, 2)] == [cb.GetColorEntry(i) for i in (1, 2)]
    assert ca.GetColorEntry(2)[:3] == (240, 208, 32)
    assert read_classes(da.GetRasterBand(1)) == read_classes(db.GetRasterBand(1))
    assert read_classes(da.GetRasterBand(1))[1][2] == "blob"


def test_pt_model_runs_through_the_onnx_cache_on_cpu(trained, tmp_path, cache_dir):
    from mapseg.core.infer.segment import Options, segment_raster

    logs = []
    from mapseg.core.progress import Reporter

    rep = Reporter(log=logs.append)
    res = segment_raster(trained["scene"], trained["model"], str(tmp_path / "a.tif"),
                         options=Options(device="cpu", runtime="auto"), reporter=rep)  # fmt: skip
    assert res.runtime.startswith("ONNX Runtime")
    cached = [f for f in os.listdir(os.path.join(cache_dir, "onnx")) if f.endswith(".onnx")]
    assert any(f.endswith("-t32-v1.onnx") for f in cached)
    ref = segment_raster(trained["scene"], trained["model"], str(tmp_path / "b.tif"),
                         options=Options(device="cpu", runtime="torch"))  # fmt: skip
    assert ref.runtime.startswith("PyTorch")
    a, b = read_raster(res.output), read_raster(ref.output)
    assert (a == b).mean() >= 0.999


def _blocker(folder) -> dict:
    """Environment for a qgis_process in which importing torch & co. fails."""
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            for name in {HIDDEN!r}:
                sys.modules[name] = None  # import fails; importlib.util.find_spec gives None
            """
        )
    )
    return {"PYTHONPATH": str(folder)}


def test_segments_without_pytorch(scene, deepness, trained, tmp_path):
    env = _blocker(tmp_path / "site")
    dest = str(tmp_path / "deepness.tif")
    proc = qgis_process("segmentraster", {"INPUT": scene["src"], "MODEL": deepness,
                                          "OUTPUT": dest}, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert (read_raster(dest) == deepness_truth(scene["img"])).mean() >= 0.999
    # the default model (shipped as ONNX), label-free, with k-means in numpy
    seg = str(tmp_path / "segments.tif")
    proc = qgis_process("segmentraster", {"INPUT": scene["src"], "NUM_SEGMENTS": 3,
                                          "OUTPUT": seg}, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    ids = read_raster(seg)
    assert set(np.unique(ids)) == {1, 2, 3}
    # each land cover of the scene is mostly one segment
    for c in range(3):
        _, counts = np.unique(ids[scene["truth"] == c], return_counts=True)
        assert counts.max() / counts.sum() > 0.8
    polys = str(tmp_path / "segments.gpkg")
    proc = qgis_process("polygonizeclasses", {"INPUT": seg, "OUTPUT": polys}, env=env)
    assert proc.returncode == 0 and os.path.exists(polys), proc.stderr + proc.stdout
    # a .pt model without PyTorch (not exported on this machine yet): a clear error
    proc = qgis_process("segmentraster", {"INPUT": trained["scene"], "MODEL": trained["model"],
                                          "OUTPUT": str(tmp_path / "pt.tif"), "TILE_SIZE": 48},
                        env=env)  # fmt: skip
    assert proc.returncode != 0 and "needs PyTorch" in proc.stdout + proc.stderr
    assert not os.path.exists(tmp_path / "pt.tif")
    proc = qgis_process("trainmodel", {"INPUT": scene["src"], "OUTPUT_MODEL":
                                       str(tmp_path / "m.pt")}, env=env)  # fmt: skip
    assert proc.returncode != 0 and "torch" in proc.stdout + proc.stderr
    assert not os.path.exists(tmp_path / "m.pt")


@pytest.mark.parametrize("case", ["corrupt", "classifier", "detector"])
def test_unusable_onnx_files_are_refused(provider, scene, tmp_path, case):
    from qgis.core import QgsProcessingException

    model = tmp_path / f"{case}.onnx"
    if case == "corrupt":
        model.write_bytes(b"\x08\x07" + os.urandom(300))
        message = "not a usable ONNX model"
    elif case == "classifier":
        import torch

        net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                  torch.nn.Linear(3, 5)).eval()  # fmt: skip
        torch.onnx.export(net, torch.zeros(1, 3, 32, 32), str(model), dynamo=False)
        message = "not a segmentation model"
    else:
        deepness_model(model, props={"model_type": "Detector"})
        message = "not a segmentation model"
    dest = tmp_path / "out.tif"
    with pytest.raises(QgsProcessingException, match=message):
        run_alg("segmentraster", {"INPUT": scene["src"], "MODEL": str(model), "OUTPUT": str(dest)})
    assert not dest.exists()


def test_cuda_without_onnxruntime_cuda_provider_is_a_clear_error(
    provider, scene, deepness, tmp_path
):
    import onnxruntime as ort
    from qgis.core import QgsProcessingException

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    dest = tmp_path / "out.tif"
    with pytest.raises(QgsProcessingException, match="onnxruntime-gpu"):
        run_alg("segmentraster", {"INPUT": scene["src"], "MODEL": deepness, "DEVICE": "cuda",
                                  "OUTPUT": str(dest)})  # fmt: skip
    assert not dest.exists()


def test_shipped_onnx_default_matches_the_pt_default():
    """weights/mapseg_default.onnx must be the export of weights/mapseg_default.pt: same
    metadata, same embeddings (rebuild it with core.model.export.export_onnx(..., dynamic_size=True)
    whenever the .pt changes)."""
    from mapseg.core.infer.inputs import DEFAULT_MODEL, DEFAULT_ONNX, PLUGIN_DIR
    from mapseg.core.model.export import compare_outputs
    from mapseg.core.model.modelfile import load_model
    from mapseg.core.model.onnxnet import OnnxModel

    meta, state = load_model(os.path.join(PLUGIN_DIR, DEFAULT_MODEL))
    path = os.path.join(PLUGIN_DIR, DEFAULT_ONNX)
    shipped = OnnxModel(path, "cpu").meta
    assert {k: shipped[k] for k in meta} == json.loads(json.dumps(meta))
    for tile in (64, 96):  # any tile size: the shipped export's height and width are free
        assert compare_outputs(meta, state, path, tile) < 1e-4


@pytest.mark.parametrize(
    "arch,kwargs",
    [("unet", {"base_width": 4, "upsampling": "transpose"}), ("deeplabv3", {}), ("fcn", {}),
     ("refinenet", {})],
)  # fmt: skip
def test_every_architecture_exports_faithfully(tmp_path, arch, kwargs):
    import torch

    from mapseg.core.model.export import compare_outputs, export_onnx
    from mapseg.core.model.modelfile import new_meta
    from mapseg.nets import build_network

    torch.manual_seed(0)
    net = build_network(arch, 4, 3, **kwargs).eval()
    meta = new_meta(
        architecture=arch, arch_kwargs=net.mapseg_arch["kwargs"], in_bands=4,
        band_stats=[{"offset": 0.0, "scale": 255.0, "low": 0.0, "high": 255.0}] * 4,
        classes=[{"value": i, "name": f"c{i}", "color": [40 * i, 90, 30]} for i in range(3)],
        tile_size=64,
    )  # fmt: skip
    path = export_onnx(meta, net.state_dict(), str(tmp_path / "m.onnx"), 64, 8)
    assert compare_outputs(meta, net.state_dict(), path, 64, seed=1) < 1e-4  # probabilities


def test_export_model_refuses_bad_inputs_and_writes_nothing(provider, tmp_path):
    from qgis.core import QgsProcessingException

    not_a_model = tmp_path / "notes.pt"
    not_a_model.write_text("not a model")
    dest = tmp_path / "out.onnx"
    with pytest.raises(QgsProcessingException, match="not a MapSeg model file"):
        run_alg("exportmodel", {"MODEL": str(not_a_model), "OUTPUT": str(dest)})
    assert not dest.exists() and os.listdir(tmp_path) == ["notes.pt"]
