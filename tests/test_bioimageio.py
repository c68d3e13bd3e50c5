"""bioimage.io export (spec 0.5 zip), `bioimageio test` offline, and import for fine-tuning."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import yaml

from napari_fcres.bioimageio_export import (
    CITATION,
    architecture_source,
    export_bioimageio,
    import_bioimageio,
)
from napari_fcres.checkpoint import load_model, read_checkpoint
from napari_fcres.cli import main
from napari_fcres.config import preset_config
from napari_fcres.errors import CheckpointError, InputError
from napari_fcres.inference import predict
from napari_fcres.models import build_model
from napari_fcres.sample_data import synthetic_em_stack
from napari_fcres.training import run_training

pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny tensors: one thread


@pytest.fixture(scope="module")
def stack():
    return synthetic_em_stack(shape=(4, 64, 64), seed=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, stack):
    """A trained two-member ensemble: the pipeline and the standardize baseline."""
    root = tmp_path_factory.mktemp("bio")
    for k, arch in enumerate(("pipeline", "fcresnet-standardize")):
        cfg = preset_config("tiny", architecture=arch)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(
            cfg.train, epochs=1, steps_per_epoch=3, crop_size=32, batch_size=2, device="cpu",
            seed=k,
        ))
        run_training(cfg, *stack, root / "run" / arch)
    return root


@pytest.fixture(scope="module")
def package(trained):
    return export_bioimageio(trained / "run", trained / "model.zip", test_size=64)


def test_package_contents_and_outputs(package, trained):
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        raw = np.load(zf.open("test_input.npy"))
        expected = np.load(zf.open("test_output.npy"))
    assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "fcres_architecture.py",
            "README.md", "cover.png", "test_input.npy", "test_output.npy"} <= names
    assert rdf["format_version"].startswith("0.5") and rdf["type"] == "model"
    assert rdf["cite"] == [CITATION] and rdf["cite"][0]["doi"] == "10.1016/j.media.2017.11.005"
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["callable"] == "FcresEnsemble"
    assert rdf["weights"]["torchscript"]["parent"] == "pytorch_state_dict"
    assert raw.shape == expected.shape == (1, 1, 64, 64)
    # the package's output is the ensemble average napari-fcres' own predict gives
    models = [load_model(p)[0] for p in sorted((trained / "run").glob("**/best.pt"))]
    ours = predict(models, raw[0, 0], tile_size=64, overlap=0).probabilities
    np.testing.assert_allclose(expected[0, 0], ours, atol=1e-5)
    assert "import napari_fcres" not in architecture_source()


def test_bioimageio_test_passes_offline(package):
    """Includes the smallest input the spec allows, whose deepest level is 1x1."""
    if shutil.which("bioimageio") is None:
        pytest.skip("bioimageio.core is not installed (pip install napari-fcres[bioimageio])")
    cmd = ["bioimageio", "test", str(package)]
    # no network: a fresh network namespace where we may create one (root on Linux)
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"],
                                                  capture_output=True).returncode == 0:
        cmd = ["unshare", "-n", *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8",
                          errors="replace", env=env, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "passed" in out and "❌" not in out


def test_import_for_fine_tuning(package, trained, stack, tmp_path):
    folder = import_bioimageio(package, tmp_path / "imported")
    files = sorted(folder.glob("member_*/best.pt"))
    assert len(files) == 2
    originals = sorted((trained / "run").glob("**/best.pt"))
    for new, old in zip(files, originals, strict=True):
        a, b = read_checkpoint(new), read_checkpoint(old)
        assert a["config"]["model"] == b["config"]["model"]
        for key, value in b["model_state"].items():
            torch.testing.assert_close(a["model_state"][key], value)
    one = import_bioimageio(package, tmp_path / "one.pt", member=1)  # sorted: pipeline 2nd
    assert read_checkpoint(one)["architecture"] == "pipeline"
    cfg = preset_config("tiny")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, epochs=1, steps_per_epoch=2, crop_size=32, batch_size=2, device="cpu"))
    result = run_training(cfg, *stack, tmp_path / "tuned", init_checkpoint=one)
    assert result.best_checkpoints[0].exists()
    with pytest.raises(InputError, match="member 5"):
        import_bioimageio(package, tmp_path / "x.pt", member=5)


def test_cli_round_trip_and_errors(trained, tmp_path, capsys):
    ckpt = next((trained / "run" / "pipeline").glob("**/best.pt"))
    out = tmp_path / "single.zip"
    assert main(["export-bioimageio", "--models", str(ckpt), "--out", str(out),
                 "--no-torchscript", "--author", "Test Author", "--maintainer", "someone"]) == 0
    with zipfile.ZipFile(out) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
    assert rdf["authors"] == [{"name": "Test Author"}] and "torchscript" not in rdf["weights"]
    assert rdf["maintainers"] == [{"github_user": "someone"}]
    assert main(["import-bioimageio", str(out), "--out", str(tmp_path / "ck.pt")]) == 0
    model, _ = load_model(tmp_path / "ck.pt")
    original, _ = load_model(ckpt)
    x = torch.from_numpy(np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32))
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x))
    capsys.readouterr()
    # a foreign package: no napari-fcres configs inside
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("rdf.yaml", yaml.safe_dump({"type": "model", "weights": {}}))
    with pytest.raises(CheckpointError, match="not exported by napari-fcres"):
        import_bioimageio(foreign, tmp_path / "f.pt")
    assert main(["export-bioimageio", "--models", str(ckpt), "--out",
                 str(tmp_path / "m.tar")]) == 2
    assert ".zip" in capsys.readouterr().err


def test_export_needs_no_bioimageio(trained, tmp_path, monkeypatch):
    """Writing a package works without bioimageio.spec (validation is then skipped)."""
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)
    ckpt = next((trained / "run" / "pipeline").glob("**/best.pt"))
    path = export_bioimageio(ckpt, tmp_path / "p.zip", test_size=32, torchscript=False)
    assert zipfile.is_zipfile(path)


# ----------------------------------------------------------------------------- untrusted packages

def _package_folder(folder, source: str) -> tuple:
    """A minimal importable package in ``folder`` whose weights are named ``source``."""
    cfg = preset_config("tiny")
    state = {f"members.0.{k}": v for k, v in build_model(cfg.model).state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    rdf = {"type": "model", "config": {"napari_fcres": {"configs": [cfg.to_dict()]}},
           "weights": {"pytorch_state_dict": {"source": source}}}
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    return rdf, state


def test_names_in_rdf_that_leave_the_package_are_refused(tmp_path):
    outside = tmp_path / "outside.pt"  # valid weights: only the name decides
    pkg = tmp_path / "pkg"
    _, state = _package_folder(pkg, "weights.pt")
    torch.save(state, outside)
    torch.save(state, pkg / "weights.pt")
    assert import_bioimageio(pkg, tmp_path / "ok.pt").exists()  # the honest package imports
    for source in ("../outside.pt", str(outside), "sub/../../outside.pt", "C:/outside.pt"):
        _package_folder(pkg, source)
        with pytest.raises(CheckpointError, match="inside the package.*refused") as err:
            import_bioimageio(pkg, tmp_path / "x.pt")
        assert "\n" not in str(err.value)
    (pkg / "link.pt").symlink_to(outside)  # a symbolic link out of the package
    _package_folder(pkg, "link.pt")
    with pytest.raises(CheckpointError, match="leads outside the package"):
        import_bioimageio(pkg, tmp_path / "x.pt")
    # a zip: the same names are refused before anything is read
    rdf, _ = _package_folder(tmp_path / "z", "../outside.pt")
    with zipfile.ZipFile(tmp_path / "pkg.zip", "w") as zf:
        zf.writestr("rdf.yaml", yaml.safe_dump(rdf))
        zf.writestr("../outside.pt", outside.read_bytes())
    with pytest.raises(CheckpointError, match="inside the package"):
        import_bioimageio(tmp_path / "pkg.zip", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.skipif(os.name != "posix", reason="the crafted file runs a POSIX shell command")
def test_package_weights_that_would_run_code_are_refused(tmp_path):
    marker = tmp_path / "MARKER"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    pkg = tmp_path / "pkg"
    _package_folder(pkg, "weights.pt")
    torch.save({"members.0.x": RunsCode()}, pkg / "weights.pt")
    with pytest.raises(CheckpointError, match="cannot read the weights"):
        import_bioimageio(pkg, tmp_path / "x.pt")
    assert not marker.exists() and not (tmp_path / "x.pt").exists()


def test_import_never_replaces_a_checkpoint(tmp_path):
    pkg = tmp_path / "pkg"
    _, state = _package_folder(pkg, "weights.pt")
    torch.save(state, pkg / "weights.pt")
    target = tmp_path / "mine.pt"
    target.write_bytes(b"my own checkpoint")
    with pytest.raises(InputError, match="already exists"):
        import_bioimageio(pkg, target)
    assert target.read_bytes() == b"my own checkpoint"
