"""Tests of napari_fcres.io: reading and writing images and labels.

The checks of images and labels and the label conventions: tests/test_label_rules.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from skimage import io as skio

from napari_fcres.errors import InputError
from napari_fcres.io import (
    Volume,
    read_image,
    write_image,
    write_labels,
)


@pytest.fixture
def stack() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 4000, size=(4, 20, 24), dtype=np.uint16)


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_tiff_roundtrip_keeps_dtype_and_spacing(tmp_path, dtype):
    data = (np.arange(4 * 10 * 12).reshape(4, 10, 12) % 200).astype(dtype)
    path = write_image(tmp_path / "img.tif", data, spacing=(2.5, 0.5, 0.25))
    vol = read_image(path)
    assert isinstance(vol, Volume)
    assert vol.data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(vol.data, data)
    assert vol.spacing == pytest.approx((2.5, 0.5, 0.25))
    assert vol.path == str(path)


def test_tiff_without_spacing_has_none(tmp_path, stack):
    tifffile.imwrite(tmp_path / "plain.tif", stack, photometric="minisblack")
    vol = read_image(tmp_path / "plain.tif")
    np.testing.assert_array_equal(vol.data, stack)
    assert vol.spacing is None


def test_tiff_2d_spacing(tmp_path):
    data = np.arange(30, dtype=np.uint8).reshape(5, 6)
    write_labels(tmp_path / "lab.tiff", data, spacing=(0.3, 0.2))
    vol = read_image(tmp_path / "lab.tiff")
    np.testing.assert_array_equal(vol.data, data)
    assert vol.spacing == pytest.approx((0.3, 0.2))


def test_imagej_tiff_written_by_tifffile(tmp_path, stack):
    tifffile.imwrite(
        tmp_path / "ij.tif",
        stack,
        imagej=True,
        resolution=(1 / 0.4, 1 / 0.4),
        metadata={"spacing": 3.0, "unit": "um", "axes": "ZYX"},
    )
    vol = read_image(tmp_path / "ij.tif")
    assert vol.spacing == pytest.approx((3.0, 0.4, 0.4))
    assert vol.metadata["unit"] in ("um", "\\u00B5m", "µm", "micron")


def test_ome_tiff_physical_size(tmp_path, stack):
    tifffile.imwrite(
        tmp_path / "x.ome.tif",
        stack,
        ome=True,
        photometric="minisblack",
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.2, "PhysicalSizeZ": 1.5},
    )
    vol = read_image(tmp_path / "x.ome.tif")
    np.testing.assert_array_equal(vol.data, stack)
    assert vol.spacing == pytest.approx((1.5, 0.2, 0.1))


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".mhd", ".nrrd"])
def test_sitk_roundtrip_spacing_in_numpy_order(tmp_path, stack, suffix):
    path = write_image(tmp_path / f"vol{suffix}", stack, spacing=(3.0, 0.5, 0.25))
    vol = read_image(path)
    np.testing.assert_array_equal(vol.data, stack)
    assert vol.data.dtype == stack.dtype
    assert vol.spacing == pytest.approx((3.0, 0.5, 0.25))
    # SimpleITK itself sees (x, y, z)
    assert sitk.ReadImage(str(path)).GetSpacing() == pytest.approx((0.25, 0.5, 3.0))
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd", ".tif"])
def test_labels_roundtrip(tmp_path, suffix):
    labels = np.zeros((3, 8, 9), dtype=np.int64)
    labels[1, 2:5, 3:6] = 7
    path = write_labels(tmp_path / f"lab{suffix}", labels, spacing=(2.0, 1.0, 0.5))
    vol = read_image(path)
    assert vol.data.dtype == np.uint8
    np.testing.assert_array_equal(vol.data, labels)
    assert vol.spacing == pytest.approx((2.0, 1.0, 0.5))


def test_png_slice_folder_natural_order(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    slices = [np.full((6, 7), i * 10, dtype=np.uint8) for i in range(12)]
    for i, s in enumerate(slices):
        skio.imsave(folder / f"slice{i}.png", s, check_contrast=False)
    (folder / "notes.txt").write_text("ignored")
    vol = read_image(folder)
    assert vol.data.shape == (12, 6, 7)
    assert vol.data.dtype == np.uint8
    np.testing.assert_array_equal(vol.data[:, 0, 0], np.arange(12) * 10)  # 2 < 10 naturally


def test_tif_slice_folder_shape_mismatch(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    tifffile.imwrite(folder / "a1.tif", np.zeros((4, 4), np.uint8))
    tifffile.imwrite(folder / "a2.tif", np.zeros((5, 4), np.uint8))
    with pytest.raises(InputError, match="same shape"):
        read_image(folder)


def _write_dicom_series(folder, volume: np.ndarray, spacing_xyz: tuple[float, float, float]):
    """Write ``volume`` (z, y, x) as one DICOM file per slice, file names in reverse order."""
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing_xyz)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1"
    study_uid = "1.2.826.0.1.3680043.2.1125.2"
    n = volume.shape[0]
    for i in range(n):
        sl = image[:, :, i]
        pos = image.TransformIndexToPhysicalPoint((0, 0, i))
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{i + 1}",
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0020|0013": str(i + 1),
            "0020|0032": "\\".join(str(v) for v in pos),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": str(spacing_xyz[2]),
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"IM{n - i:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_folder(tmp_path):
    folder = tmp_path / "dicom"
    folder.mkdir()
    rng = np.random.default_rng(1)
    volume = rng.integers(-1000, 2000, size=(5, 16, 12), dtype=np.int16)
    _write_dicom_series(folder, volume, (0.7, 0.6, 2.0))
    vol = read_image(folder)
    assert vol.data.shape == (5, 16, 12)
    assert vol.data.dtype == np.int16
    np.testing.assert_array_equal(vol.data, volume)
    assert vol.spacing == pytest.approx((2.0, 0.6, 0.7))
    assert vol.metadata["format"] == "dicom"


# ---------------------------------------------------------------------------------------------
# writing details
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_label", "dtype"),
    [(1, np.uint8), (255, np.uint8), (256, np.uint16), (65535, np.uint16), (65536, np.uint32)],
)
def test_label_dtype_selection(tmp_path, max_label, dtype):
    labels = np.zeros((4, 5), dtype=np.int64)
    labels[0, 0] = max_label
    path = write_labels(tmp_path / "l.tif", labels)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    data = read_image(path).data
    assert data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(data, labels)


def test_uint32_labels_keep_spacing(tmp_path):
    labels = np.zeros((2, 4, 5), dtype=np.uint32)
    labels[1, 1, 1] = 100_000
    path = write_labels(tmp_path / "big.tif", labels, spacing=(4.0, 2.0, 1.0))
    vol = read_image(path)
    assert vol.data.dtype == np.uint32
    assert vol.spacing == pytest.approx((4.0, 2.0, 1.0))


def test_bool_and_integral_float_labels(tmp_path):
    path = write_labels(tmp_path / "b.tif", np.eye(4, dtype=bool))
    assert read_image(path).data.dtype == np.uint8
    path = write_labels(tmp_path / "f.tif", np.eye(4, dtype=np.float32) * 3)
    np.testing.assert_array_equal(read_image(path).data, np.eye(4) * 3)


def test_write_image_keeps_float32(tmp_path):
    prob = np.linspace(0, 1, 60, dtype=np.float32).reshape(3, 4, 5)
    path = write_image(tmp_path / "p.tif", prob, spacing=(1.0, 0.5, 0.5))
    vol = read_image(path)
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, prob)


def test_atomic_write_leaves_no_temp_and_keeps_old_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "labels.tif"
    write_labels(target, np.ones((4, 4), np.uint8))
    write_labels(target, np.full((4, 4), 2, np.uint8))  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]
    np.testing.assert_array_equal(read_image(target).data, 2)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", boom)
    with pytest.raises(OSError, match="disk full"):
        write_labels(target, np.full((4, 4), 3, np.uint8))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]
    np.testing.assert_array_equal(read_image(target).data, 2)


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        (np.array([[0, -1], [2, 3]]), "negative"),
        (np.array([[0.5, 1.0], [2.0, 3.0]]), "non-integer"),
        (np.array([[np.nan, 1.0], [2.0, 3.0]]), "non-integer"),
        (np.array([["a", "b"]]), "dtype"),
        (np.zeros((0, 3), np.uint8), "empty"),
    ],
)
def test_write_labels_rejects_bad_labels(tmp_path, labels, words):
    with pytest.raises(InputError, match=words):
        write_labels(tmp_path / "x.tif", labels)
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_bad_extension_and_spacing(tmp_path):
    with pytest.raises(InputError, match=r"unknown extension.*TIFF"):
        write_labels(tmp_path / "x.jpg", np.ones((3, 3), np.uint8))
    with pytest.raises(InputError, match="spacing"):
        write_labels(tmp_path / "x.tif", np.ones((3, 3), np.uint8), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="positive"):
        write_image(tmp_path / "x.tif", np.ones((3, 3), np.uint8), spacing=(0.0, 1.0))


# ---------------------------------------------------------------------------------------------
# reading errors
# ---------------------------------------------------------------------------------------------


def test_read_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"does not exist.*Supported formats.*NIfTI"):
        read_image(tmp_path / "nope.tif")


def test_read_unknown_extension(tmp_path):
    f = tmp_path / "data.xyz"
    f.write_text("hello")
    with pytest.raises(InputError, match=r"unknown extension.*data\.xyz|data\.xyz.*unknown"):
        read_image(f)


@pytest.mark.parametrize("suffix", [".tif", ".nii.gz", ".nrrd", ".png"])
def test_read_corrupt_file(tmp_path, suffix):
    f = tmp_path / f"broken{suffix}"
    f.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(InputError, match=r"cannot read.*broken.*Supported formats"):
        read_image(f)


def test_read_empty_folder(tmp_path):
    with pytest.raises(InputError, match="no image slices"):
        read_image(tmp_path)


def test_label_rules_still_importable_from_io():
    """The label rules live in napari_fcres.label_rules; io re-exports the old names."""
    from napari_fcres import io, label_rules

    for name in ("validate_image", "check_image_labels", "as_binary_labels", "annotated_slices"):
        assert getattr(io, name) is getattr(label_rules, name)
