"""Lazy (dask / zarr / multiscale) image layers in the Predict widget, OME-Zarr labels output
from the widget and the npe2 writer, read back with the plugin reader."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr
from qtpy.QtCore import Qt

from napari_fcres._reader import get_reader
from napari_fcres.widgets.predict import PredictWidget, default_zarr_path

pytestmark = pytest.mark.gui

WAIT_MS = 60_000


def make_widget(viewer, checkpoint: Path) -> PredictWidget:
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Predict")
    widget.checkpoint_list.set_checkpoints([checkpoint])
    widget.device_combo.setCurrentIndex(widget.device_combo.findData("cpu"))
    widget.tile_spin.setValue(128)
    return widget


def predict(qtbot, widget: PredictWidget, layer, button: str = "stack") -> dict:
    widget.image_combo.set_layer(layer)
    btn = widget.stack_button if button == "stack" else widget.slice_button
    assert btn.isEnabled()
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS) as blocker:
        qtbot.mouseClick(btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=WAIT_MS)
    return blocker.args[0]


def zarr_source(path: Path, image: np.ndarray) -> zarr.Array:
    arr = zarr.open_array(str(path), mode="w", shape=image.shape, chunks=(1, 64, 64),
                          dtype=image.dtype)
    arr[:] = image
    return arr


def ome(group) -> dict:
    """OME metadata of a group (NGFF 0.4 attributes or 0.5 ``ome``)."""
    attrs = dict(group.attrs)
    return dict(attrs.get("ome", attrs))


def assert_image_label(store: Path, name: str, spacing: tuple[float, ...]) -> None:
    root = zarr.open_group(str(store), mode="r")
    assert name in ome(root["labels"])["labels"]
    meta = ome(root["labels"][name])
    assert "image-label" in meta
    [ms] = meta["multiscales"]
    [ds] = ms["datasets"]
    assert ds["coordinateTransformations"][0]["scale"] == pytest.approx(list(spacing))


@pytest.fixture
def in_memory_labels(viewer, qtbot, em_small,
                     trained_checkpoint) -> tuple[PredictWidget, np.ndarray]:
    """The widget, and the instance labels it predicts for the in-memory small stack."""
    widget = make_widget(viewer, trained_checkpoint)
    layer = viewer.add_image(em_small[0], name="mem", scale=(2.0, 0.5, 0.5))
    assert widget.zarr_output(layer) is None  # in memory unless a path is set
    info = predict(qtbot, widget, layer)
    labels = viewer.layers[info["layers"]["labels"]].data
    assert isinstance(labels, np.ndarray) and labels.max() > 0
    return widget, labels.copy()


def test_dask_layer_gives_the_in_memory_labels(viewer, qtbot, tmp_path, em_small,
                                               in_memory_labels, notifications):
    widget, expected = in_memory_labels
    source = da.from_zarr(zarr_source(tmp_path / "src.zarr", em_small[0]))
    lazy = viewer.add_image(source, name="lazy", scale=(2.0, 0.5, 0.5),
                            contrast_limits=(0, 255))
    assert widget.zarr_output(lazy) == default_zarr_path("lazy")
    widget.image_combo.set_layer(lazy)
    assert "predictions" in widget.zarr_edit.edit.placeholderText()
    info = predict(qtbot, widget, lazy)
    assert Path(info["ome_zarr"]) == default_zarr_path("lazy") / "labels" / "lazy"
    labels = viewer.layers[info["layers"]["labels"]]
    assert isinstance(labels.data, da.Array)  # read back lazily from the store
    np.testing.assert_array_equal(np.asarray(labels.data), expected)
    np.testing.assert_allclose(labels.scale, (2.0, 0.5, 0.5))
    assert labels.metadata["fcres"]["ome_zarr"] == info["ome_zarr"]
    assert_image_label(default_zarr_path("lazy"), "lazy", (2.0, 0.5, 0.5))
    assert not notifications.errors()

    # a slice preview of a lazy image: a one-slice layer placed at that slice
    viewer.dims.set_current_step(0, 2)
    info = predict(qtbot, widget, lazy, button="slice")
    preview = viewer.layers[info["layers"]["labels"]]
    assert preview.data.shape == (1, 64, 64) and info["slice"] == 2
    np.testing.assert_array_equal(preview.data[0] > 0, expected[2] > 0)
    np.testing.assert_allclose(preview.translate, (4.0, 0.0, 0.0))


def test_multiscale_layer_to_chosen_store(viewer, qtbot, tmp_path, em_small, in_memory_labels):
    widget, expected = in_memory_labels
    level0 = da.from_zarr(zarr_source(tmp_path / "src.zarr", em_small[0]))
    layer = viewer.add_image([level0, level0[:, ::2, ::2]], multiscale=True, name="pyramid",
                             contrast_limits=(0, 255))
    out = tmp_path / "out.zarr"
    widget.zarr_edit.set_path(out)
    widget.zarr_prob_check.setChecked(True)
    info = predict(qtbot, widget, layer)
    labels = viewer.layers[info["layers"]["labels"]]
    assert labels.data.shape == em_small[0].shape  # the full-resolution level
    np.testing.assert_array_equal(np.asarray(labels.data), expected)
    prob = viewer.layers[info["layers"]["probability"]]
    assert isinstance(prob.data, da.Array) and prob.data.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(prob.data) > 0.5, expected > 0)
    assert (tmp_path / "out_probabilities.zarr").is_dir()
    # the plugin reader opens the store's labels/ group as a labels layer
    [(data, meta, kind)] = get_reader(str(out))(str(out))
    assert kind == "labels" and meta["name"] == "pyramid"
    np.testing.assert_array_equal(np.asarray(data), expected)


def test_in_memory_image_to_ome_zarr(viewer, qtbot, tmp_path, in_memory_labels):
    widget, expected = in_memory_labels
    out = tmp_path / "pred.zarr"
    widget.zarr_edit.set_path(out)
    info = predict(qtbot, widget, viewer.layers["mem"])
    assert Path(info["ome_zarr"]) == out / "labels" / "mem"
    assert_image_label(out, "mem", (2.0, 0.5, 0.5))
    shown = viewer.layers[info["layers"]["labels"]]
    np.testing.assert_array_equal(np.asarray(shown.data), expected)
    [(data, meta, kind)] = get_reader(str(out))(str(out))
    assert kind == "labels"
    np.testing.assert_array_equal(np.asarray(data), expected)
    assert tuple(meta["scale"]) == pytest.approx((2.0, 0.5, 0.5))

    # 'largest' needs the whole volume: refused up front for OME-Zarr output
    widget.mode_combo.setCurrentText("largest")
    widget.zarr_edit.set_path(tmp_path / "not-a-zarr.tif")
    from napari_fcres.errors import InputError

    with pytest.raises(InputError, match=".zarr"):
        widget.predict_stack()
    widget.zarr_edit.set_path(out)
    with pytest.raises(InputError, match="largest"):
        widget.predict_stack()
    assert not widget.is_running()


def test_stop_a_lazy_prediction(viewer, qtbot, tmp_path, tiny_checkpoint, notifications):
    rng = np.random.default_rng(0)
    data = da.from_array(rng.integers(0, 255, (24, 256, 256), dtype=np.uint8),
                         chunks=(1, 256, 256))
    viewer.add_image(data, name="big", contrast_limits=(0, 255))
    widget = make_widget(viewer, tiny_checkpoint)
    widget.tta_check.setChecked(True)
    with qtbot.waitSignal(widget.stopped, timeout=WAIT_MS):
        qtbot.mouseClick(widget.stack_button, Qt.LeftButton)
        assert widget.is_running()
        qtbot.mouseClick(widget.stop_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=WAIT_MS)
    assert "incomplete" in widget.status_label.text()
    assert "big predicted labels" not in viewer.layers
    assert not notifications.errors()
    assert widget.stack_button.isEnabled()


def test_writer_and_reader_round_trip(viewer, tmp_path, em_small):
    labels = np.zeros((3, 16, 20), np.int32)
    labels[0, 2:6, 3:9] = 7
    labels[2, 8:12, 1:4] = 300
    layer = viewer.add_labels(labels, name="cells", scale=(3.0, 1.5, 1.5))
    store = tmp_path / "seg.zarr"
    written = layer.save(str(store), plugin="napari-fcres")
    assert [Path(p) for p in written] == [store]
    assert_image_label(store, "cells", (3.0, 1.5, 1.5))
    [(data, meta, kind)] = get_reader(str(store))(str(store))
    assert kind == "labels" and meta["name"] == "cells"
    np.testing.assert_array_equal(np.asarray(data), labels)
    assert tuple(meta["scale"]) == pytest.approx((3.0, 1.5, 1.5))

    # a dask-backed labels layer goes to the same store as a second label image
    lazy = viewer.add_labels(da.from_array(labels[::-1].copy(), chunks=(1, 16, 20)),
                             name="flipped")
    lazy.save(str(store), plugin="napari-fcres")
    layers = get_reader(str(store))(str(store))
    assert [m["name"] for _, m, k in layers if k == "labels"] == ["cells", "flipped"]
    np.testing.assert_array_equal(np.asarray(layers[1][0]), labels[::-1])

    # a layer opened from the store saved back onto itself stays intact
    viewer.open(str(store), plugin="napari-fcres")
    reopened = [la for la in viewer.layers if la.metadata.get("source_path", "").endswith(
        "labels/cells")][0]
    reopened.save(str(store), plugin="napari-fcres")
    np.testing.assert_array_equal(
        np.asarray(zarr.open_array(str(store / "labels" / "cells" / "0"), mode="r")), labels)
