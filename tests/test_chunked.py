"""Block-wise (larger than memory) prediction, OME-Zarr reading/writing, dask workers."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

zarr = pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")

from napari_fcres._reader import get_reader  # noqa: E402
from napari_fcres.blocks import default_block_shape, plan_blocks  # noqa: E402
from napari_fcres.checkpoint import save_checkpoint  # noqa: E402
from napari_fcres.chunked import predict_chunked  # noqa: E402
from napari_fcres.cli import main  # noqa: E402
from napari_fcres.config import preset_config  # noqa: E402
from napari_fcres.errors import InputError, StoppedError  # noqa: E402
from napari_fcres.inference import predict  # noqa: E402
from napari_fcres.io import read_image  # noqa: E402
from napari_fcres.models import SegmentationModel, build_model  # noqa: E402
from napari_fcres.ome_zarr import (  # noqa: E402
    create_ome_zarr_image,
    read_ome_zarr,
    write_ome_zarr_labels,
)
from napari_fcres.postprocess import labels_from_probabilities  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny tensors: one thread

TILE = dict(tile_size=64, overlap=16)


def _image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (ndimage.gaussian_filter(rng.random(shape), 3) * 5).astype(np.float32)


def _model(seed: int = 0) -> SegmentationModel:
    """A tiny random model whose probabilities have real contrast (logit std ~3)."""
    torch.manual_seed(seed)
    cfg = preset_config("tiny")
    # PyTorch's default init: a random He-initialised network amplifies the zero padding
    # at tile edges far more than a trained one, which would swamp the seam comparison
    model = build_model(dataclasses.replace(cfg.model, init="torch",
                                            norm_stats="running")).eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        logits = model(torch.from_numpy(_image((96, 96), seed=99))[None, None])
        k = 3.0 / float(logits.std())
        last.weight.mul_(k)
        last.bias.mul_(k).sub_(float(logits.mean()) * k)
    return model


@pytest.fixture(scope="module")
def model() -> SegmentationModel:
    return _model()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model) -> Path:
    path = tmp_path_factory.mktemp("ck") / "best.pt"
    cfg = preset_config("tiny")
    cfg.model.norm_stats = "running"  # as ``model`` was built
    save_checkpoint(path, {"config": cfg.to_dict(), "preset": "tiny", "architecture": "pipeline",
                           "model_state": model.state_dict()})
    return path


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return _image((2, 120, 110), seed=1)


@pytest.fixture(scope="module")
def reference(model, volume) -> np.ndarray:
    return predict(model, volume, **TILE).probabilities


def _zarr(path: Path, data: np.ndarray, chunks: tuple[int, ...]):
    arr = zarr.open_array(str(path), mode="w", shape=data.shape, chunks=chunks, dtype=data.dtype)
    arr[:] = data
    return arr


# ----------------------------------------------------------------------------- blocks


def test_blocks_tile_the_volume_once_with_aligned_halo():
    shape = (5, 100, 90)
    blocks = plan_blocks(shape, (2, 32, 40), axis=0, halo=16, divisor=8)
    hits = np.zeros(shape, int)
    for b in blocks:
        hits[b.inner] += 1
        assert b.outer[0] == b.inner[0]  # no halo across slices
        for i, o, n in zip(b.inner[1:], b.outer[1:], shape[1:], strict=True):
            assert o.start % 8 == 0 and o.start <= i.start and o.stop >= i.stop
            assert i.start - o.start >= min(16, i.start) and o.stop - i.stop == min(16, n - i.stop)
    assert (hits == 1).all()
    # slicing along axis 2: that axis gets no halo, the other two do
    b = plan_blocks(shape, (2, 32, 30), axis=2, halo=16)[5]
    assert b.outer[2] == b.inner[2] and b.outer[1] != b.inner[1]
    assert default_block_shape((64, 4096, 4096), (64, 64, 64)) == (64, 512, 512)


# ----------------------------------------------------------------------------- prediction


def test_halo_blocks_match_in_memory_prediction(tmp_path, model, volume, reference):
    src = _zarr(tmp_path / "src.zarr", volume, (1, 32, 32))
    out = predict_chunked(model, src, tmp_path / "out.zarr", block_shape=(1, 64, 64), **TILE)
    assert out.chunks == (1, 32, 32) and out.dtype == np.float32
    err = np.abs(out[:] - reference)
    assert err.max() < 0.05 and err.mean() < 0.005
    # the halo is what makes the centres right
    bare = predict_chunked(model, src, tmp_path / "bare.zarr", block_shape=(1, 64, 64), halo=0,
                           **TILE)
    assert np.abs(bare[:] - reference).mean() > 3 * err.mean()


def test_whole_slice_blocks_are_exact_and_uint8_and_labels(tmp_path, model, volume, reference):
    src = _zarr(tmp_path / "src.zarr", volume, (1, 120, 110))
    labels = zarr.open_array(str(tmp_path / "lab.zarr"), mode="w", shape=volume.shape,
                             chunks=(1, 120, 110), dtype="uint8")
    seen = []
    out = predict_chunked(model, src, tmp_path / "out.zarr", dtype="uint8", labels_target=labels,
                          progress=lambda d, n: seen.append((d, n)), **TILE)
    assert seen[-1] == (2, 2)
    assert out.dtype == np.uint8
    assert np.abs(out[:] / 255.0 - reference).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(labels[:], (reference > 0.5).astype(np.uint8))
    exact = predict_chunked(model, src, tmp_path / "f.zarr", **TILE)
    np.testing.assert_array_equal(exact[:], reference)


def test_dask_source_other_axis_and_2d(tmp_path, model, volume):
    sub = volume[:, :12]  # slicing along axis 1: 12 slices of 2 x 110
    source = da.from_array(sub, chunks=(2, 6, 55))
    ref1 = predict(model, sub, axis=1, **TILE).probabilities
    target = zarr.open_array(str(tmp_path / "o.zarr"), mode="w", shape=sub.shape,
                             chunks=(2, 6, 55), dtype="float32")
    predict_chunked(model, source, target, axis=1, **TILE)
    assert np.abs(target[:] - ref1).max() < 0.05
    image2d = volume[0]
    ref2 = predict(model, image2d, **TILE).probabilities
    out2 = predict_chunked(model, _zarr(tmp_path / "s2.zarr", image2d, (48, 48)),
                           tmp_path / "o2.zarr", block_shape=(96, 96), **TILE)
    assert np.abs(out2[:] - ref2).max() < 0.05


def test_errors_and_stop(tmp_path, model, volume):
    src = _zarr(tmp_path / "src.zarr", volume, (1, 32, 32))
    with pytest.raises(InputError, match="whole number of the output's chunks"):
        predict_chunked(model, src, tmp_path / "o.zarr", block_shape=(1, 48, 48), **TILE)
    wrong = zarr.open_array(str(tmp_path / "w.zarr"), mode="w", shape=(2, 5, 5), dtype="f4")
    with pytest.raises(InputError, match="shape"):
        predict_chunked(model, src, wrong, **TILE)
    with pytest.raises(InputError, match="2D image or a 3D volume"):
        predict_chunked(model, np.zeros((2, 2, 8, 8), np.float32), tmp_path / "x.zarr")
    with pytest.raises(InputError, match="checkpoint paths"):
        predict_chunked(model, src, tmp_path / "o.zarr", client=object())
    with pytest.raises(InputError, match="uint8"):
        predict_chunked(model, src, zarr.open_array(str(tmp_path / "i.zarr"), mode="w",
                                                    shape=volume.shape, dtype="int32"))
    with pytest.raises(StoppedError):
        predict_chunked(model, src, tmp_path / "o.zarr", should_stop=lambda: True, **TILE)


# ----------------------------------------------------------------------------- OME-Zarr


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_labels_round_trip(tmp_path, version):
    labels = (np.arange(3 * 40 * 30).reshape(3, 40, 30) % 7 == 0).astype(np.uint8)
    image = create_ome_zarr_image(tmp_path / "img.zarr", labels.shape, "uint16",
                                  chunks=(1, 16, 16), spacing=(3.0, 0.5, 0.5),
                                  ngff_version=version)
    image[:] = 5
    group = write_ome_zarr_labels(tmp_path / "img.zarr", da.from_array(labels, chunks=(1, 16, 16)),
                                  "cells", spacing=(3.0, 0.5, 0.5), ngff_version=version)
    assert group == tmp_path / "img.zarr" / "labels" / "cells"
    meta_file = group / (".zattrs" if version == "0.4" else "zarr.json")
    attrs = json.loads(meta_file.read_text())
    attrs = attrs if version == "0.4" else attrs["attributes"]["ome"]
    assert attrs["image-label"]["source"] == {"image": "../../"}
    assert attrs["multiscales"][0]["axes"][0] == {"name": "z", "type": "space"}
    if version == "0.4":
        assert json.loads((group / "0" / ".zarray").read_text())["dimension_separator"] == "/"
    # our readers
    vol = read_image(group)
    np.testing.assert_array_equal(vol.data, labels)
    assert vol.spacing == (3.0, 0.5, 0.5)
    levels, meta = read_ome_zarr(tmp_path / "img.zarr")
    assert meta["labels"] == ["cells"] and meta["version"] == version
    assert read_image(tmp_path / "img.zarr").data.max() == 5
    layers = get_reader(str(tmp_path / "img.zarr"))(str(tmp_path / "img.zarr"))
    assert [(m["name"], kind) for _, m, kind in layers] == [("image", "image"),
                                                            ("cells", "labels")]
    assert layers[1][1]["scale"] == (3.0, 0.5, 0.5)
    # ome-zarr-py, when installed
    ome_io = pytest.importorskip("ome_zarr.io")
    from ome_zarr.reader import Label, Reader

    nodes = list(Reader(ome_io.parse_url(str(tmp_path / "img.zarr")))())
    found = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert len(found) == 1
    np.testing.assert_array_equal(np.asarray(found[0].data[0]), labels)


def test_ome_zarr_names_that_leave_the_store_are_refused(tmp_path):
    """Label names and dataset paths come from a stranger's metadata: only nodes inside."""
    create_ome_zarr_image(tmp_path / "other.zarr", (2, 16, 16), "uint8")  # a store beside it
    image = create_ome_zarr_image(tmp_path / "img.zarr", (2, 16, 16), "uint8")
    image[:] = 1
    write_ome_zarr_labels(tmp_path / "img.zarr", np.ones((2, 16, 16), np.uint8), "cells")
    labels = zarr.open_group(str(tmp_path / "img.zarr" / "labels"), mode="r+")
    for name in ("../../other.zarr", str(tmp_path / "other.zarr"), "cells/../.."):
        labels.attrs["labels"] = [name]
        with pytest.raises(InputError, match="inside the store; refused"):
            read_ome_zarr(tmp_path / "img.zarr")
        with pytest.raises(InputError, match="inside the store"):
            get_reader(str(tmp_path / "img.zarr"))(str(tmp_path / "img.zarr"))
    labels.attrs["labels"] = ["cells"]
    root = zarr.open_group(str(tmp_path / "img.zarr"), mode="r+")
    ms = root.attrs["multiscales"]
    ms[0]["datasets"][0]["path"] = "../other.zarr/0"
    root.attrs["multiscales"] = ms
    with pytest.raises(InputError, match="dataset '../other.zarr/0'.*refused"):
        read_image(tmp_path / "img.zarr")


def test_cli_chunked_writes_ome_zarr_labels(tmp_path, checkpoint, model, volume, capsys):
    image = create_ome_zarr_image(tmp_path / "img.zarr", volume.shape, "float32",
                                  chunks=(1, 64, 64), spacing=(2.0, 1.0, 1.0))
    image[:] = volume
    code = main(["-q", "predict", str(tmp_path / "img.zarr"), "--models", str(checkpoint),
                 "--out", str(tmp_path / "img.zarr"), "--chunked", "--label-name", "fcres",
                 "--probabilities", str(tmp_path / "prob.zarr"), "--tile", "64", "--overlap",
                 "16", "--device", "cpu"])
    assert code == 0
    assert capsys.readouterr().out.strip().endswith("labels/fcres")
    ref = predict(model, volume, tta=True, **TILE).probabilities  # TTA: the CLI default
    prob = read_image(tmp_path / "prob.zarr")
    assert prob.spacing == (2.0, 1.0, 1.0)
    assert np.abs(prob.data - ref).max() < 0.05
    labels = read_image(tmp_path / "img.zarr" / "labels" / "fcres").data
    assert (labels == (prob.data > 0.5)).all()
    assert main(["predict", str(tmp_path / "img.zarr"), "--models", str(checkpoint), "--out",
                 str(tmp_path / "l.tif"), "--chunked"]) == 2
    assert "must be a .zarr path" in capsys.readouterr().err


def test_cli_chunked_instances_match_in_memory(tmp_path, checkpoint, model, volume, capsys):
    """``predict --chunked --mode instances``: per-slice instance ids, as the in-memory path."""
    image = create_ome_zarr_image(tmp_path / "img.zarr", volume.shape, "float32",
                                  chunks=(1, 120, 110), spacing=(2.0, 1.0, 1.0),
                                  ngff_version="0.5")
    image[:] = volume
    out = tmp_path / "out.zarr"
    code = main(["-q", "predict", str(tmp_path / "img.zarr"), "--models", str(checkpoint),
                 "--out", str(out), "--chunked", "--mode", "instances", "--label-name", "cells",
                 "--tile", "64", "--overlap", "16", "--device", "cpu"])
    assert code == 0
    assert capsys.readouterr().out.strip().endswith("labels/cells")
    labels = read_image(out / "labels" / "cells")
    assert labels.data.shape == volume.shape
    assert labels.data.dtype.kind == "u"  # an integer label volume (uint32)
    assert labels.spacing == (2.0, 1.0, 1.0)
    ids = np.unique(labels.data)
    assert ids[0] == 0 and len(ids) > 2  # background and more than one instance
    per_slice = [set(np.unique(s)) - {0} for s in labels.data]
    assert not per_slice[0] & per_slice[1]  # ids continue across slices
    expected = labels_from_probabilities(predict(model, volume, tta=True, **TILE).probabilities,
                                         mode="instances")
    np.testing.assert_array_equal(labels.data, expected)  # whole-slice blocks: exact
    # 'largest' and --min-size still need the whole volume
    for extra in (["--mode", "largest"], ["--mode", "instances", "--min-size", "5"]):
        assert main(["predict", str(tmp_path / "img.zarr"), "--models", str(checkpoint),
                     "--out", str(out), "--chunked", *extra]) == 2
        assert "whole volume" in capsys.readouterr().err


def test_ome_zarr_module_imports_without_torch():
    """Reading OME-Zarr (and io / the reader plugin) never imports torch or the predictor."""
    code = ("import sys, napari_fcres.ome_zarr, napari_fcres.blocks, napari_fcres.io, "
            "napari_fcres._reader, napari_fcres._writer; "
            "print('torch' in sys.modules, 'napari_fcres.chunked' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.split() == ["False", "False"]


def test_dask_distributed_workers_equal_in_memory(tmp_path, checkpoint, volume, reference):
    distributed = pytest.importorskip("distributed")
    src = _zarr(tmp_path / "src.zarr", volume, (1, 64, 64))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        out = predict_chunked([checkpoint], src, tmp_path / "out.zarr", client=client,
                              block_shape=(1, 64, 128), **TILE)
        lazy = predict_chunked([checkpoint], da.from_zarr(src), tmp_path / "out2.zarr",
                               client=client, block_shape=(1, 64, 128), **TILE)
    assert np.abs(out[:] - reference).max() < 0.05
    np.testing.assert_array_equal(lazy[:], out[:])
