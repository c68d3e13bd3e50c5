"""The Train widget driven like a user: settings, Start, Stop, Resume, failures."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractSpinBox,
    QComboBox,
    QLineEdit,
    QMessageBox,
)

from napari_fcres.checkpoint import read_checkpoint
from napari_fcres.config import preset_config
from napari_fcres.selection import metric_name
from napari_fcres.training import replace_train, run_training
from napari_fcres.widgets._pickers import recent_checkpoints
from napari_fcres.widgets.train import TrainWidget, detect_partial, validation_basis

pytestmark = pytest.mark.gui

WAIT_MS = 90_000


def wait_done(qtbot, widget: TrainWidget, timeout: int = WAIT_MS) -> None:
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=timeout)


def assert_usable(widget: TrainWidget) -> None:
    assert not widget.is_running()
    assert widget.start_button.isEnabled()
    assert not widget.stop_button.isEnabled()
    assert widget.image_combo.isEnabled() and widget.labels_combo.isEnabled()


def test_layers_preset_and_tooltips(viewer, qtbot, em_layers, tmp_path, make_train_widget):
    widget = make_train_widget(tmp_path)
    img, lab = em_layers
    assert widget.image_combo.layer().name == img.name
    assert widget.labels_combo.layer().name == lab.name
    assert widget.label_mode() == "full"  # full labels: every slice labelled
    assert widget.preset_combo.currentText() == "tiny"
    assert widget.arch_combo.currentText() == "auto"
    assert widget.device_combo.findData("cpu") >= 0
    # a new labels layer painted with 1 (background) and 2 (foreground) is a partial annotation
    partial = np.zeros(img.data.shape, np.uint8)
    partial[1, :10, :10] = 1
    partial[1, 20:30, 20:30] = 2
    viewer.add_labels(partial, name="painted")
    widget.labels_combo.set_layer("painted")
    assert widget.label_mode() == "partial"
    assert "1 of 4" in widget.annotated_label.text()
    viewer.layers.remove("painted")
    assert widget.labels_combo.layer().name == lab.name
    # every control explains itself
    controls = [
        w for w in widget.findChildren((QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit))
        if w.isVisibleTo(widget) or w.parentWidget() is not None
    ]
    assert len(controls) > 15
    missing = []
    for w in controls:
        node, tip = w, ""
        while node is not None and node is not widget and not tip:
            tip, node = node.toolTip(), node.parentWidget()
        if not tip:
            missing.append(f"{type(w).__name__} {getattr(w, 'text', lambda: '')()!r}")
    assert not missing, missing
    for i in range(widget.preset_combo.count()):
        assert widget.preset_combo.itemData(i, Qt.ToolTipRole)


def test_detect_partial():
    full = np.zeros((3, 8, 8), np.uint8)
    full[:, :4] = 1
    assert not detect_partial(full)
    part = full.copy()
    part[1] = 0  # an empty slice alone does not make 0 'not annotated' (0 may be a class)
    assert not detect_partial(part)
    painted = np.zeros((8, 8), np.uint8)
    painted[:2] = 1
    painted[4:6] = 2
    assert detect_partial(painted)
    assert not detect_partial(np.zeros((2, 4, 4), np.uint8))


def test_full_training_run(viewer, qtbot, em_layers, tmp_path, make_train_widget, click):
    widget = make_train_widget(tmp_path, epochs=2)
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS) as sig:
        click(widget.start_button)
        assert widget.is_running()
        assert not widget.start_button.isEnabled() and widget.stop_button.isEnabled()
    wait_done(qtbot, widget)
    result = sig.args[0]
    assert result is widget.last_result and not result.stopped
    best = tmp_path / "run" / "member_00" / "best.pt"
    assert best.exists() and (tmp_path / "run" / "member_00" / "last.pt").exists()
    assert widget.best_checkpoints == [best]
    assert recent_checkpoints() == [best]
    ck = read_checkpoint(best)
    # 4 painted slices: "auto" trains the plain UNet; a 64x64 crop holds too few cells for
    # V_rand, so validation Dice picks the kept checkpoint ("final" is for membrane EM)
    assert ck["preset"] == "tiny" and ck["architecture"] == "unet" and ck["kept"] == "best"
    assert result.kept == "best" and "best validation" in widget.status_label.text()
    # live plot: a loss per step, the validation score that keeps the checkpoint per
    # validation (a short run: at its end only)
    data = widget.plot_data()
    steps, losses = data["loss"][0]
    assert len(steps) >= 2 and steps == sorted(steps) and np.isfinite(losses).all()
    assert data["score"][0][0] == [steps[-1]]  # validated at the last step
    line = widget.ax_loss.get_lines()[0]
    assert len(line.get_xdata()) == len(steps)
    assert len(widget.ax_score.get_lines()[0].get_xdata()) == 1
    # the loss is shown positive (few slices: BCE + 1 - Dice), the score is the one that decides
    assert widget.ax_loss.get_title() == "training loss (BCE + 1 − Dice)"
    assert all(v >= 0.0 for v in losses)
    assert f"validation {metric_name(result.metric)}" in widget.ax_score.get_title()
    assert "finished" in widget.status_label.text()
    assert "validating on" in widget.status_label.text()
    # the Output field still names the run the status names (Start would pick a new folder)
    assert Path(widget.output_edit.path()) == tmp_path / "run"
    assert str(best) in widget.status_label.text()
    assert_usable(widget)


def test_stop_then_resume(viewer, qtbot, em_layers, tmp_path, make_train_widget, click):
    widget = make_train_widget(tmp_path, epochs=1000)
    click(widget.start_button)
    qtbot.waitUntil(lambda: len(widget.plot_data()["loss"].get(0, ([], []))[0]) >= 4,
                    timeout=WAIT_MS)
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS) as sig:
        t0 = time.perf_counter()
        click(widget.stop_button)
        assert not widget.stop_button.isEnabled()  # a second click does nothing
    wait_done(qtbot, widget)
    stop_seconds = time.perf_counter() - t0
    assert stop_seconds < 10, f"Stop took {stop_seconds:.1f} s"
    result = sig.args[0]
    assert result.stopped
    member = tmp_path / "run" / "member_00"
    assert (member / "last.pt").exists() and (member / "best.pt").exists()
    last = read_checkpoint(member / "last.pt")
    stopped_step, stopped_epoch = int(last["step"]), int(last["epoch"])
    assert stopped_step >= 4 and not last["finished"]
    assert_usable(widget)
    assert widget.resume_button.isEnabled()
    assert Path(widget.output_edit.path()) == tmp_path / "run"

    # Resume: continues the same run from its last step, up to two more epochs
    widget.epochs_spin.setValue(stopped_epoch + 2)
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS) as sig:
        click(widget.resume_button)
    wait_done(qtbot, widget)
    assert not sig.args[0].stopped
    last = read_checkpoint(member / "last.pt")
    assert last["finished"] and int(last["step"]) > stopped_step
    assert int(last["epoch"]) == stopped_epoch + 2
    steps = widget.plot_data()["loss"][0][0]
    assert stopped_step + 1 in steps and steps[-1] == int(last["step"])
    assert_usable(widget)


def test_failure_all_zero_labels(viewer, qtbot, em_layers, tmp_path, notifications,
                                 make_train_widget, click):
    img, _ = em_layers
    viewer.add_labels(np.zeros(img.data.shape, np.uint8), name="empty")
    widget = make_train_widget(tmp_path)
    widget.labels_combo.set_layer("empty")
    assert "all 0" in widget.annotated_label.text()  # said before Start
    click(widget.start_button)  # refused at once: no run, no worker
    assert not widget.is_running()
    assert any("Cannot start training" in m and "all 0" in m for m in notifications.messages())
    assert widget.status_label.text().startswith("Cannot start training: the labels are all 0")
    assert_usable(widget)
    assert widget.last_result is None


def test_failure_runtime_error_in_worker(viewer, qtbot, em_layers, tmp_path, notifications,
                                         monkeypatch, make_train_widget, click):
    import napari_fcres.training as training

    real_train = training.train

    def broken_train(*args, **kwargs):
        gen = real_train(*args, **kwargs)
        yield next(gen)
        raise RuntimeError("simulated crash inside the worker")

    monkeypatch.setenv("NAPARI_FCRES_WORKER", "thread")  # the patch lives in this process
    monkeypatch.setattr(training, "train", broken_train)
    widget = make_train_widget(tmp_path)
    with qtbot.waitSignal(widget.failed, timeout=WAIT_MS) as sig:
        click(widget.start_button)
    wait_done(qtbot, widget)
    failed = sig.args[0]
    assert failed.original_type == "RuntimeError" and not failed.user_error
    assert "simulated crash" in failed.message and "broken_train" in failed.traceback_text
    shown = [n for n in notifications.errors() if "simulated crash" in str(n.message)]
    assert shown and "broken_train" in shown[0].as_text()  # "View Traceback" shows the worker's
    assert_usable(widget)


def test_failure_out_of_memory(viewer, qtbot, em_layers, tmp_path, notifications, monkeypatch,
                               make_train_widget, click):
    import napari_fcres.training as training

    def oom_train(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield  # a generator

    monkeypatch.setenv("NAPARI_FCRES_WORKER", "thread")  # the patch lives in this process
    monkeypatch.setattr(training, "train", oom_train)
    widget = make_train_widget(tmp_path)
    with qtbot.waitSignal(widget.failed, timeout=WAIT_MS) as sig:
        click(widget.start_button)
    wait_done(qtbot, widget)
    assert "out of memory" in sig.args[0].message and "batch" in sig.args[0].message
    assert notifications.errors()
    assert_usable(widget)


def test_training_runs_in_a_worker_process_and_its_errors_reach_the_ui(
        viewer, qtbot, em_layers, tmp_path, notifications, make_train_widget, click):
    """A failure in the worker process (a corrupt checkpoint) arrives as the user's message."""
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint")
    img, lab = em_layers
    widget = make_train_widget(tmp_path)
    with qtbot.waitSignal(widget.failed, timeout=WAIT_MS) as sig:
        widget.train_on(img, lab, init_checkpoint=str(bad), output_dir=str(tmp_path / "ft"))
    wait_done(qtbot, widget)
    failed = sig.args[0]
    assert failed.user_error and "corrupt.pt" in failed.message
    assert "read_checkpoint" in failed.traceback_text  # the worker process's traceback
    assert_usable(widget)


def test_killed_worker_process_leaves_napari_running_and_the_run_resumable(
        viewer, qtbot, em_layers, tmp_path, notifications, make_train_widget, click):
    """SIGKILL of the training process (as the kernel's OOM killer does) mid-run."""
    widget = make_train_widget(tmp_path, epochs=200)
    epochs_seen: list[int] = []
    widget.progressed.connect(
        lambda p: epochs_seen.append(p.epoch) if p.kind == "validation" else None)
    click(widget.start_button)
    run = tmp_path / "run"
    qtbot.waitUntil(lambda: bool(epochs_seen) and any(run.rglob("last.pt")), timeout=WAIT_MS)
    job = widget.job.worker.process_jobs[0]
    assert job.pid is not None
    with qtbot.waitSignal(widget.failed, timeout=WAIT_MS) as sig:
        job.kill()
    wait_done(qtbot, widget)
    message = sig.args[0].message
    assert "SIGKILL" in message and "napari itself is unaffected" in message
    assert "resumable" in message and "Resume" in widget.status_label.text()
    assert_usable(widget)
    assert widget.resume_button.isEnabled()
    widget.epochs_spin.setValue(epochs_seen[-1] + 2)
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS) as done:
        click(widget.resume_button)
    wait_done(qtbot, widget)
    assert not done.args[0].stopped


def test_start_without_labels_layer(viewer, qtbot, em_small, tmp_path, notifications,
                                    make_train_widget, click):
    viewer.add_image(em_small[0], name="only image")
    widget = make_train_widget(tmp_path)
    click(widget.start_button)
    assert not widget.is_running()
    assert any("labels layer" in m for m in notifications.messages())
    assert_usable(widget)


def test_train_on_slices_finetune_preprocessor(viewer, qtbot, em_layers, tmp_path,
                                               tiny_checkpoint, make_train_widget):
    img, lab = em_layers
    widget = make_train_widget(tmp_path, epochs=1)
    widget.preset_combo.setCurrentText("cpu")  # the checkpoint's preset wins
    out = tmp_path / "finetune"
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS) as sig:
        widget.train_on(img, lab, slices=[0, 2, 3], init_checkpoint=str(tiny_checkpoint),
                        freeze_fcresnet=True, output_dir=str(out))
    wait_done(qtbot, widget)
    assert not sig.args[0].stopped
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["preset"] == "tiny"
    assert cfg["train"]["freeze_fcresnet"] is True
    best = read_checkpoint(out / "member_00" / "best.pt")
    init = read_checkpoint(tiny_checkpoint)
    # the FC-ResNet stayed frozen, the pre-processor moved
    fc = [k for k in init["model_state"] if k.startswith("fcresnet.") and "weight" in k]
    pre = [k for k in init["model_state"] if k.startswith("preprocessor.") and "weight" in k]
    assert all(torch.equal(init["model_state"][k], best["model_state"][k]) for k in fc)
    assert any(not torch.equal(init["model_state"][k], best["model_state"][k]) for k in pre)
    assert sorted(set(best["split"]["train"] + best["split"]["val"])) == [0, 1, 2]
    assert widget.best_checkpoints == [out / "member_00" / "best.pt"]
    # a second run while one is active is refused
    widget.epochs_spin.setValue(1000)
    widget.train_on(img, lab, output_dir=str(tmp_path / "long"))
    with pytest.raises(Exception, match="already active"):
        widget.train_on(img, lab)
    widget.stop()
    wait_done(qtbot, widget)


def test_plugin_thread_check_is_active(viewer):
    """Setting a viewer attribute off the GUI thread raises (the check our widgets pass)."""
    errors: list[BaseException] = []

    def set_title() -> None:
        try:
            viewer.title = "from a thread"
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=set_title)
    thread.start()
    thread.join()
    assert errors and "main Qt thread" in str(errors[0])


@pytest.mark.parametrize(
    ("display_name", "cls_name"),
    [("Train / fine-tune", "TrainWidget"), ("Inspect normalization", "InspectWidget")],
)
def test_widgets_open_from_the_plugin_menu(make_napari_viewer, display_name, cls_name):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-fcres", display_name)
    assert type(widget).__name__ == cls_name


def test_closing_the_widget_stops_training(viewer, qtbot, em_layers, tmp_path,
                                           make_train_widget, click):
    widget = make_train_widget(tmp_path, epochs=1000)
    click(widget.start_button)
    qtbot.waitUntil(lambda: len(widget.plot_data()["loss"].get(0, ([], []))[0]) >= 2,
                    timeout=WAIT_MS)
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS) as sig:
        viewer.window.remove_dock_widget("all")  # the dock's close button does this
    wait_done(qtbot, widget)
    assert sig.args[0].stopped
    last = read_checkpoint(tmp_path / "run" / "member_00" / "last.pt")
    assert not last["finished"]
    assert_usable(widget)


# ----------------------------------------------------------------------------- resume rule

@pytest.fixture
def stopped_run(tmp_path, em_small):
    """A tiny run (the widget's settings for it) stopped after 3 steps: resumable."""
    cfg = replace_train(preset_config("tiny"), epochs=3, crop_size=32, steps_per_epoch=2,
                        device="cpu", max_minutes=None)
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    out = tmp_path / "stopped"
    assert run_training(cfg, *em_small, out, should_stop=stop).stopped
    return out


def test_choosing_a_run_folder_shows_its_settings_and_resume_finishes_it(
        viewer, qtbot, em_layers, stopped_run, make_train_widget, click):
    widget = make_train_widget(stopped_run.parent / "elsewhere", epochs=9)
    widget.preset_combo.setCurrentText("cpu")
    widget.crop_spin.setValue(64)
    widget.output_edit.set_path(stopped_run)  # as if chosen with Browse...
    assert widget.preset_combo.currentText() == "tiny"
    assert widget.epochs_spin.value() == 3 and widget.crop_spin.value() == 32
    assert widget.resume_button.isEnabled()
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS) as sig:
        click(widget.resume_button)
    wait_done(qtbot, widget)
    assert not sig.args[0].stopped
    last = read_checkpoint(stopped_run / "member_00" / "last.pt")
    assert last["finished"] and last["epoch"] == 3 and last["step"] == 6
    assert_usable(widget)


def test_resume_with_other_settings_is_refused_naming_them(
        viewer, qtbot, em_layers, stopped_run, notifications, make_train_widget, click):
    widget = make_train_widget(stopped_run.parent / "elsewhere")
    widget.output_edit.set_path(stopped_run)
    widget.lr_spin.setValue(0.01)
    widget.epochs_spin.setValue(5)  # harmless on its own
    with qtbot.waitSignal(widget.failed, timeout=WAIT_MS):
        click(widget.resume_button)
    wait_done(qtbot, widget)
    assert "train.lr: 0.001 in the run, 0.01 now" in widget.status_label.text()
    assert "epochs" not in widget.status_label.text().split("(only")[0]
    last = read_checkpoint(stopped_run / "member_00" / "last.pt")
    assert last["step"] == 3 and not last["finished"]  # untouched
    assert_usable(widget)


def test_resume_with_nothing_to_resume_says_so(viewer, qtbot, em_layers, tmp_path,
                                               notifications, make_train_widget):
    widget = make_train_widget(tmp_path)
    (tmp_path / "run").mkdir()
    assert not widget.resume_button.isEnabled()
    widget._launch(resume=True)  # what the button would do, were it enabled
    assert not widget.is_running()
    assert any("nothing to resume in" in m and str(tmp_path / "run") in m
               for m in notifications.messages())


# ----------------------------------------------------------------------------- an existing run

def test_start_on_a_folder_holding_a_run_asks_first(viewer, qtbot, em_layers, tmp_path,
                                                    make_train_widget, click, monkeypatch):
    widget = make_train_widget(tmp_path, epochs=1)
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS):
        click(widget.start_button)
    wait_done(qtbot, widget)
    run = tmp_path / "run"
    best = run / "member_00" / "best.pt"
    before = best.read_bytes()
    offered: list[list[str]] = []

    def answer(choice: str) -> None:
        def exec_(box: QMessageBox) -> int:
            offered.append([b.text() for b in box.buttons()])
            button = (box.button(QMessageBox.Cancel) if choice == "cancel" else
                      next(b for b in box.buttons() if b.text().startswith(choice)))
            button.click()
            return 0

        monkeypatch.setattr(QMessageBox, "exec_", exec_)

    answer("cancel")
    click(widget.start_button)
    assert not widget.is_running() and best.read_bytes() == before
    assert "Resume" in offered[-1] and any(t.startswith("Start over") for t in offered[-1])

    # start over: the old run moves aside whole, the new one trains in the same folder
    answer("Start over")
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS) as sig:
        click(widget.start_button)
    wait_done(qtbot, widget)
    aside = sig.args[0].moved_aside
    assert aside is not None and aside.parent == tmp_path and aside.name.startswith("run.old-")
    assert (aside / "member_00" / "best.pt").read_bytes() == before
    assert best.exists() and Path(widget.output_edit.path()) == run
    assert str(aside) in widget.status_label.text()

    # resume: continues the run in the folder
    widget.epochs_spin.setValue(2)
    answer("Resume")
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS):
        click(widget.start_button)
    wait_done(qtbot, widget)
    assert int(read_checkpoint(run / "member_00" / "last.pt")["epoch"]) == 2
    assert len(list(tmp_path.glob("run.old-*"))) == 1
    assert_usable(widget)


@pytest.mark.parametrize("n, fraction, split", [
    (1, 0.2, "auto"), (3, 0.2, "auto"), (5, 0.0, "auto"), (7, 0.2, "slices"),
    (8, 0.2, "auto"), (30, 0.2, "auto"), (30, 0.2, "regions")])
def test_validation_basis_follows_the_split(n, fraction, split):
    """Before training reports its own account, the status words the split training makes."""
    from napari_fcres.training import choose_validation

    expected = choose_validation(list(range(n)), 100, fraction, split, seed=0).describe(n)
    assert validation_basis(n, fraction, split) == expected
    told = type("P", (), {"validation_basis": "validating on held-out tiles"})()
    assert validation_basis(n, fraction, split, told) == "validating on held-out tiles"
