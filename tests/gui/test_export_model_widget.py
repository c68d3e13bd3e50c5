"""The Export model (bioimage.io) widget: one model or an ensemble as a package zip."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractButton, QComboBox, QLineEdit, QListWidget

from napari_fcres.widgets.export_model import ExportModelWidget

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_thread")]  # tiny tensors

WAIT_MS = 120_000


def _bioimageio_installed() -> bool:
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec  # noqa: F401
    except ImportError:
        return False
    return True


needs_bioimageio = pytest.mark.skipif(
    not _bioimageio_installed(),
    reason="bioimageio.spec/core are not installed (pip install napari-fcres[bioimageio])",
)


def make_widget(viewer, checkpoints, out: Path) -> ExportModelWidget:
    widget = ExportModelWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Export model (bioimage.io)")
    widget.checkpoint_list.set_checkpoints(checkpoints)
    widget.output_edit.set_path(out)
    widget.torchscript_check.setChecked(False)  # faster; the core tests cover TorchScript
    return widget


def test_every_control_has_a_tooltip(viewer, tiny_checkpoint, tmp_path):
    widget = make_widget(viewer, [tiny_checkpoint], tmp_path / "m.zip")
    kinds = (QAbstractButton, QComboBox, QLineEdit, QListWidget)
    controls = [w for w in widget.findChildren(kinds)
                if w.parent() is not None and not isinstance(w.parent(), QComboBox)]
    assert len(controls) >= 10
    missing = [type(w).__name__ + ":" + getattr(w, "text", lambda: "")()
               for w in controls if not w.toolTip()]
    assert not missing


def test_name_sets_the_default_package_name(viewer, tiny_checkpoint):
    widget = ExportModelWidget(viewer)
    widget.name_edit.setText("")
    widget.name_edit.textEdited.emit("Mito EM v2")
    assert Path(widget.output_edit.path()).name == "Mito_EM_v2.zip"
    widget.deleteLater()


@needs_bioimageio
def test_export_ensemble_and_import_back(viewer, qtbot, tiny_checkpoint, tmp_path,
                                         notifications):
    from napari_fcres.bioimageio_export import import_bioimageio
    from napari_fcres.checkpoint import read_checkpoint

    members = []
    for k in range(2):  # an ensemble of two (identical) members
        path = tmp_path / "run" / f"member_{k:02d}" / "best.pt"
        path.parent.mkdir(parents=True)
        shutil.copy(tiny_checkpoint, path)
        members.append(path)
    out = tmp_path / "pkg" / "model.zip"
    widget = make_widget(viewer, members, out)
    widget.name_edit.setText("tiny ensemble")
    widget.authors_edit.setText("Ada, Grace")
    with qtbot.waitSignal(widget.exported, timeout=WAIT_MS) as blocker:
        qtbot.mouseClick(widget.export_button, Qt.LeftButton)
        assert widget.is_running() and not widget.export_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=WAIT_MS)
    assert blocker.args[0] == out and out.is_file()
    assert widget.export_button.isEnabled()
    assert not notifications.errors()
    assert any("Exported" in m for m in notifications.messages())
    with zipfile.ZipFile(out) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
    assert rdf["name"] == "tiny ensemble"
    assert [a["name"] for a in rdf["authors"]] == ["Ada", "Grace"]
    assert len(rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["members"]) == 2
    imported = import_bioimageio(out, tmp_path / "imported")
    found = sorted(imported.glob("member_*/best.pt"))
    assert len(found) == 2
    original = read_checkpoint(tiny_checkpoint)["model_state"]
    back = read_checkpoint(found[1])["model_state"]
    assert original.keys() == back.keys()
    assert all(torch.equal(original[k], back[k]) for k in original)


def test_export_error_reaches_the_ui(viewer, qtbot, tmp_path, notifications):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    widget = make_widget(viewer, [bad], tmp_path / "model.zip")
    with qtbot.waitSignal(widget.failed, timeout=WAIT_MS) as blocker:
        qtbot.mouseClick(widget.export_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=WAIT_MS)
    assert "not a readable checkpoint" in blocker.args[0].message
    assert notifications.errors()
    assert "failed" in widget.status_label.text()
    assert widget.export_button.isEnabled()
    assert not (tmp_path / "model.zip").exists()
    # a wrong output name is refused before anything starts
    widget.output_edit.set_path(tmp_path / "model.tar")
    qtbot.mouseClick(widget.export_button, Qt.LeftButton)
    assert not widget.is_running()
    assert "must be a .zip" in str(notifications.errors()[-1].message)
