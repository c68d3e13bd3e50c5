"""Tests of napari_fcres.sample_data: the synthetic stack and fetching ISBI 2012."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_fcres import sample_data
from napari_fcres.errors import FcresError, InputError
from napari_fcres.sample_data import (
    fetch_isbi2012,
    load_isbi2012,
    load_sample_stack,
    synthetic_em_stack,
)

SHARED = sample_data.SHARED_ISBI_DIR  # ../shared beside the checkout
ISBI_FILES = ("train-volume.tif", "train-labels.tif", "test-volume.tif")


@pytest.fixture(scope="module")
def generated_sample() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_em_stack(shape=sample_data.SAMPLE_SHAPE, seed=sample_data.SAMPLE_SEED)


# ---------------------------------------------------------------------------------------------
# synthetic stack
# ---------------------------------------------------------------------------------------------


def test_synthetic_shapes_dtypes_and_values():
    image, labels = synthetic_em_stack(shape=(4, 96, 80), seed=3)
    assert image.shape == labels.shape == (4, 96, 80)
    assert image.dtype == labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 255}
    membrane_fraction = float((labels == 0).mean())
    assert 0.08 < membrane_fraction < 0.4
    assert image.std() > 10  # not flat


def test_synthetic_default_shape():
    image, labels = synthetic_em_stack()
    assert image.shape == labels.shape == (8, 256, 256)


def test_synthetic_deterministic():
    a_img, a_lab = synthetic_em_stack(shape=(3, 64, 64), seed=7)
    b_img, b_lab = synthetic_em_stack(shape=(3, 64, 64), seed=7)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, c_lab = synthetic_em_stack(shape=(3, 64, 64), seed=8)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_lab, c_lab)


def test_membranes_darker_than_interior(generated_sample):
    image, labels = generated_sample
    membrane = image[labels == 0].astype(float).mean()
    interior = image[labels == 255].astype(float).mean()
    assert membrane < interior - 30


def test_neighbouring_slices_correlated(generated_sample):
    _, labels = generated_sample
    membrane = labels == 0

    def overlap(a: np.ndarray, b: np.ndarray) -> float:
        return float((a & b).sum() / (a | b).sum())

    near = np.mean([overlap(membrane[z], membrane[z + 1]) for z in range(len(membrane) - 1)])
    far = np.mean([overlap(membrane[z], membrane[z + 8]) for z in range(len(membrane) - 8)])
    assert near > far + 0.1


def test_bad_shape():
    with pytest.raises(InputError, match="shape"):
        synthetic_em_stack(shape=(64, 64))


def test_shipped_sample_files_equal_generated(generated_sample):
    image_path = sample_data.SAMPLE_DIR / sample_data.SAMPLE_IMAGE_NAME
    labels_path = sample_data.SAMPLE_DIR / sample_data.SAMPLE_LABELS_NAME
    if not (image_path.is_file() and labels_path.is_file()):
        pytest.skip("shipped sample files are not in this checkout")
    assert image_path.stat().st_size + labels_path.stat().st_size < 1.5e6
    with tifffile.TiffFile(image_path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    shipped_image, shipped_labels = load_sample_stack()
    gen_image, gen_labels = generated_sample
    assert shipped_image.dtype == shipped_labels.dtype == np.uint8
    np.testing.assert_array_equal(shipped_labels, gen_labels)
    # identical here; tolerate last-bit float differences of another platform's libm
    diff = np.abs(shipped_image.astype(int) - gen_image.astype(int))
    assert diff.max() <= 1 and np.count_nonzero(diff) <= diff.size * 1e-3


def test_load_sample_stack_falls_back_to_generating(tmp_path, monkeypatch, generated_sample):
    monkeypatch.setattr(sample_data, "SAMPLE_DIR", tmp_path)
    image, labels = load_sample_stack()
    np.testing.assert_array_equal(image, generated_sample[0])
    np.testing.assert_array_equal(labels, generated_sample[1])


# ---------------------------------------------------------------------------------------------
# ISBI 2012: local copies
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_local_isbi(monkeypatch, tmp_path):
    """Hide every local ISBI copy so fetch_isbi2012 must download."""
    monkeypatch.delenv(sample_data.ISBI_DIR_ENV, raising=False)
    monkeypatch.setattr(sample_data, "SHARED_ISBI_DIR", tmp_path / "no-shared-copy")


def _fake_isbi_folder(folder: Path) -> dict[str, str]:
    """Write three small fake TIFFs; return their registry entries (sha256)."""
    folder.mkdir(parents=True, exist_ok=True)
    registry = {}
    for i, name in enumerate(ISBI_FILES):
        tifffile.imwrite(
            folder / name, np.full((2, 8, 8), i * 50, np.uint8), photometric="minisblack"
        )
        registry[name] = "sha256:" + hashlib.sha256((folder / name).read_bytes()).hexdigest()
    return registry


def test_local_dir_argument(tmp_path, no_local_isbi):
    folder = tmp_path / "mine"
    _fake_isbi_folder(folder)
    paths = fetch_isbi2012(local_dir=folder)
    assert set(paths) == set(ISBI_FILES)
    assert all(p.parent == folder for p in paths.values())
    arrays = load_isbi2012(local_dir=folder)
    assert set(arrays) == {"train_image", "train_labels", "test_image"}
    assert arrays["train_labels"].max() == 50


def test_env_dir_and_incomplete_dir(tmp_path, monkeypatch, no_local_isbi):
    folder = tmp_path / "envdir"
    _fake_isbi_folder(folder)
    monkeypatch.setenv(sample_data.ISBI_DIR_ENV, str(folder))
    assert fetch_isbi2012()["test-volume.tif"] == folder / "test-volume.tif"
    (folder / "test-volume.tif").unlink()
    with pytest.raises(InputError, match="test-volume.tif"):
        fetch_isbi2012()
    with pytest.raises(InputError, match="train-volume.tif"):
        fetch_isbi2012(local_dir=tmp_path / "empty")


@pytest.mark.skipif(
    not all((SHARED / n).is_file() for n in ISBI_FILES),
    reason="no shared ISBI 2012 copy on this machine",
)
def test_shared_isbi_copy(monkeypatch):
    monkeypatch.delenv(sample_data.ISBI_DIR_ENV, raising=False)
    monkeypatch.setenv(sample_data.ISBI_URL_ENV, "http://127.0.0.1:9/unreachable/")
    paths = fetch_isbi2012()  # the copy beside the checkout, no download
    assert paths["train-labels.tif"].resolve() == (SHARED / "train-labels.tif").resolve()
    data = load_isbi2012(local_dir=SHARED)
    assert data["train_image"].shape == data["train_labels"].shape == (30, 512, 512)
    assert data["test_image"].shape == (30, 512, 512)
    assert set(np.unique(data["train_labels"])) == {0, 255}


# ---------------------------------------------------------------------------------------------
# ISBI 2012: download from a loopback HTTP server
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def http_folder(tmp_path, monkeypatch):
    """Serve a temp folder on 127.0.0.1; yields (folder, list of requested paths)."""
    folder = tmp_path / "served"
    folder.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv(sample_data.ISBI_URL_ENV, f"http://127.0.0.1:{server.server_port}/v1")
    try:
        yield folder, requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_and_cache(tmp_path, monkeypatch, http_folder, no_local_isbi):
    folder, requests = http_folder
    registry = _fake_isbi_folder(folder / "v1")
    monkeypatch.setattr(sample_data, "ISBI_REGISTRY", registry)
    cache = tmp_path / "cache"
    paths = fetch_isbi2012(cache_dir=cache)
    assert set(paths) == set(ISBI_FILES)
    for name, path in paths.items():
        assert path.is_file() and cache in path.parents
        assert path.read_bytes() == (folder / "v1" / name).read_bytes()
    assert sorted(requests) == sorted(f"/v1/{n}" for n in ISBI_FILES)
    # second call: served from the cache, no new request
    again = fetch_isbi2012(cache_dir=cache)
    assert again == paths
    assert len(requests) == len(ISBI_FILES)
    arrays = load_isbi2012(cache_dir=cache)
    assert arrays["test_image"].max() == 100
    assert len(requests) == len(ISBI_FILES)


def test_download_hash_mismatch(tmp_path, monkeypatch, http_folder, no_local_isbi):
    folder, _ = http_folder
    registry = _fake_isbi_folder(folder / "v1")
    (folder / "v1" / "train-labels.tif").write_bytes(b"corrupted download")
    monkeypatch.setattr(sample_data, "ISBI_REGISTRY", registry)
    cache = tmp_path / "cache"
    with pytest.raises(FcresError, match=r"train-labels\.tif.*NAPARI_FCRES_ISBI_DIR"):
        fetch_isbi2012(cache_dir=cache)
    assert not (cache / "isbi2012" / "train-labels.tif").exists()


def test_download_missing_file(tmp_path, monkeypatch, http_folder, no_local_isbi):
    folder, _ = http_folder
    registry = _fake_isbi_folder(folder / "v1")
    (folder / "v1" / "test-volume.tif").unlink()
    monkeypatch.setattr(sample_data, "ISBI_REGISTRY", registry)
    with pytest.raises(FcresError, match=r"could not download test-volume\.tif"):
        fetch_isbi2012(cache_dir=tmp_path / "cache")
