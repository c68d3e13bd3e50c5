"""npe2 reader, writers, sample data and the manifest."""

from __future__ import annotations

import locale
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from napari.layers import Labels

from napari_fcres._reader import get_reader
from napari_fcres._sample_data import isbi2012, synthetic_em
from napari_fcres._writer import write_labels_nifti, write_labels_tiff
from napari_fcres.io import read_image, write_image, write_labels
from napari_fcres.sample_data import SHARED_ISBI_DIR

pytestmark = pytest.mark.gui

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- reader


def test_reader_declines_unknown(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert get_reader(str(empty)) is None


def test_tiff_image_with_spacing(tmp_path):
    data = np.arange(3 * 8 * 10, dtype=np.uint16).reshape(3, 8, 10)
    path = tmp_path / "stack.tif"
    write_image(path, data, spacing=(2.0, 0.5, 0.25))
    reader = get_reader(str(path))
    assert reader is not None
    [(arr, meta, kind)] = reader(str(path))
    assert kind == "image"
    np.testing.assert_array_equal(arr, data)
    assert meta["name"] == "stack"
    assert meta["scale"] == pytest.approx((2.0, 0.5, 0.25))


def test_label_file_opens_as_labels(tmp_path):
    labels = np.zeros((2, 6, 6), np.uint8)
    labels[:, 2:4, 2:4] = 1
    path = tmp_path / "cell_labels.tif"
    write_labels(path, labels)
    [(arr, meta, kind)] = get_reader(str(path))(str(path))
    assert kind == "labels"
    np.testing.assert_array_equal(arr, labels)
    # a float file named "label" stays an image
    fpath = tmp_path / "label_probability.tif"
    write_image(fpath, labels.astype(np.float32) / 2)
    assert get_reader(str(fpath))(str(fpath))[0][2] == "image"


@pytest.mark.parametrize("ext", [".nii.gz", ".mha", ".nrrd"])
def test_sitk_formats_keep_spacing(tmp_path, ext):
    data = np.random.default_rng(0).integers(0, 1000, (4, 5, 6)).astype(np.int16)
    path = tmp_path / f"scan{ext}"
    write_image(path, data, spacing=(3.0, 0.8, 0.7))
    [(arr, meta, kind)] = get_reader(str(path))(str(path))
    assert kind == "image" and meta["name"] == "scan"
    np.testing.assert_array_equal(arr, data)
    assert meta["scale"] == pytest.approx((3.0, 0.8, 0.7))


def _write_dicom_series(folder: Path, volume: np.ndarray, spacing_xyz: tuple) -> None:
    # GDCM's first DICOM write switches the whole process to the C locale, which would make
    # later tests read text as ASCII: put the locale back afterwards
    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_dicom_slices(folder, volume, spacing_xyz)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_slices(folder: Path, volume: np.ndarray, spacing_xyz: tuple) -> None:
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing_xyz)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series, study = "1.2.826.0.1.3680043.2.1125.11", "1.2.826.0.1.3680043.2.1125.12"
    for i in range(volume.shape[0]):
        sl = image[:, :, i]
        pos = image.TransformIndexToPhysicalPoint((0, 0, i))
        for key, value in {
            "0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series}.{i + 1}", "0020|000d": study, "0020|000e": series,
            "0020|0013": str(i + 1), "0020|0032": "\\".join(str(v) for v in pos),
            "0020|0037": "1\\0\\0\\0\\1\\0", "0018|0050": str(spacing_xyz[2]),
        }.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{i:03d}"))  # no extension: found by magic
        writer.SetImageIO("GDCMImageIO")
        writer.Execute(sl)


def test_dicom_folder_is_one_volume(tmp_path):
    folder = tmp_path / "ct"
    folder.mkdir()
    volume = np.random.default_rng(1).integers(-1000, 2000, (5, 16, 12)).astype(np.int16)
    _write_dicom_series(folder, volume, (0.7, 0.6, 2.0))
    reader = get_reader(str(folder))
    assert reader is not None
    [(arr, meta, kind)] = reader(str(folder))
    assert kind == "image" and arr.shape == (5, 16, 12)
    np.testing.assert_array_equal(arr, volume)
    assert meta["scale"] == pytest.approx((2.0, 0.6, 0.7))


def test_open_through_napari(viewer, tmp_path):
    data = np.random.default_rng(2).integers(0, 255, (3, 16, 16)).astype(np.uint8)
    path = tmp_path / "em.nii.gz"
    write_image(path, data, spacing=(40.0, 4.0, 4.0))
    layers = viewer.open(str(path), plugin="napari-fcres")
    assert len(layers) == 1 and layers[0].name == "em"
    np.testing.assert_allclose(layers[0].scale, (40.0, 4.0, 4.0))


# ----------------------------------------------------------------------------- writers


@pytest.mark.parametrize(
    ("writer", "name"),
    [(write_labels_tiff, "labels.tif"), (write_labels_nifti, "labels.nii.gz"),
     (write_labels_nifti, "labels.nii")],
)
def test_labels_writers_roundtrip(tmp_path, writer, name):
    labels = np.zeros((3, 10, 12), np.int32)
    labels[1, 2:5, 3:9] = 2
    labels[2, 4:8, 1:4] = 7
    path = tmp_path / name
    out = writer(str(path), labels, {"scale": (2.5, 0.5, 0.5), "name": "seg"})
    assert out == [str(path)] and path.exists()
    vol = read_image(path)
    np.testing.assert_array_equal(vol.data, labels)
    assert vol.data.dtype == np.uint8  # smallest dtype holding the labels
    assert vol.spacing == pytest.approx((2.5, 0.5, 0.5))


def test_save_labels_layer_through_napari(viewer, tmp_path):
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[0, 1:3, 1:3] = 1
    layer = viewer.add_labels(labels, name="seg", scale=(3.0, 1.5, 1.5))
    path = tmp_path / "seg.nii.gz"
    written = layer.save(str(path), plugin="napari-fcres")
    assert [Path(p) for p in written] == [path]
    vol = read_image(path)
    np.testing.assert_array_equal(vol.data, labels)
    assert vol.spacing == pytest.approx((3.0, 1.5, 1.5))


# ----------------------------------------------------------------------------- samples


def test_synthetic_sample():
    (image, imeta, ikind), (labels, lmeta, lkind) = synthetic_em()
    assert (ikind, lkind) == ("image", "labels")
    assert imeta["name"] == "EM (synthetic)" and lmeta["name"] == "EM labels (synthetic)"
    assert image.shape == labels.shape == (16, 256, 256)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1}


def test_sample_through_napari(viewer):
    viewer.open_sample("napari-fcres", "synthetic_em")
    names = [layer.name for layer in viewer.layers]
    assert names == ["EM (synthetic)", "EM labels (synthetic)"]
    assert isinstance(viewer.layers[1], Labels)


@pytest.mark.skipif(
    not (SHARED_ISBI_DIR / "train-volume.tif").exists(), reason="no local ISBI 2012 copy"
)
def test_isbi_sample():
    (image, imeta, _), (labels, lmeta, lkind) = isbi2012()
    assert image.shape == labels.shape == (30, 512, 512)
    assert lkind == "labels" and set(np.unique(labels)) == {0, 1}


# ----------------------------------------------------------------------------- manifest


def test_installed_manifest_is_the_root_one():
    installed = resources.files("napari_fcres").joinpath("napari.yaml").read_text()
    assert installed == (ROOT / "napari.yaml").read_text()


def test_npe2_validate_with_imports():
    npe2 = shutil.which("npe2")
    cmd = [npe2] if npe2 else [sys.executable, "-m", "npe2"]
    proc = subprocess.run([*cmd, "validate", "napari-fcres", "--imports"],
                          capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in (proc.stdout + proc.stderr).lower()
