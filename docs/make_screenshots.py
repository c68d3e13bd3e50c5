"""Render the README screenshots of the five napari-fcres dock widgets, with real results.

Run from the repository root under Xvfb (about 7 minutes on 2 CPU cores)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py

It opens the synthetic EM sample, trains a small ``cpu``-preset ensemble through the Train
widget (on slices 0-11, so slice 13 shown afterwards is held out), then drives the Inspect,
Predict, Correct and Export widgets through their buttons and public methods, waiting for
their workers while processing Qt events, and saves one PNG per widget into ``docs/``:
``train.png``, ``inspect.png``, ``predict.png``, ``correct.png`` and ``export.png``.

Runs, exported pairs and napari's settings go to a temporary folder; notifications are
switched off so that no toast covers the data.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("make_screenshots")

DOCS = Path(__file__).resolve().parent
PLUGIN = "napari-fcres"
IMAGE = "EM (synthetic)"
SAMPLE_LABELS = "EM labels (synthetic)"
TRAIN_SLICES = list(range(12))  # slices 12-15 stay unseen by training
SHOWN_SLICE = 13  # a held-out slice for Inspect / Predict / Correct
WINDOW_SIZE = (1600, 1000)
DOCK_WIDTH = 440
SEED = 0


# ----------------------------------------------------------------------------- Qt helpers


def process_events(seconds: float = 0.0) -> None:
    """Let Qt run (paint, deliver worker signals) for ``seconds`` (at least once)."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while True:
        QApplication.processEvents()
        if time.monotonic() >= end:
            return
        time.sleep(0.02)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Process Qt events until ``condition()`` holds; raise after ``timeout`` seconds."""
    from qtpy.QtWidgets import QApplication

    start = time.monotonic()
    last_log = start
    while not condition():
        now = time.monotonic()
        if now - start > timeout:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
        if now - last_log > 15:
            log.info("... still waiting for %s (%.0f s)", what, now - start)
            last_log = now
        QApplication.processEvents()
        time.sleep(0.02)
    log.info("%s: done in %.1f s", what, time.monotonic() - start)


def click(button: Any) -> None:
    """Click a button like a user (a real mouse click when it is on screen)."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    if not button.isEnabled():
        raise RuntimeError(f"button {button.text()!r} is disabled")
    if button.isVisible():
        QTest.mouseClick(button, Qt.LeftButton)
    else:
        button.click()
    process_events()


def hide_toasts(viewer: Any) -> None:
    """Close napari's notification toasts (none should appear: notifications are off)."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QApplication

    window = viewer.window._qt_window
    toasts = set(window.findChildren(NapariQtNotification))
    toasts.update(w for w in QApplication.topLevelWidgets()
                  if isinstance(w, NapariQtNotification))
    for toast in toasts:
        if toast.isVisible():
            log.info("closing a notification toast: %s", toast.message.text()[:80])
        toast.close()


def show_dock(viewer: Any, display_name: str, docks: list[Any]) -> tuple[Any, Any]:
    """Open a widget from the plugin (as Plugins > napari-fcres does), hide the other docks."""
    from qtpy.QtCore import Qt

    for old in docks:
        old.hide()
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, display_name)
    docks.append(dock)
    viewer.window._qt_window.resizeDocks([dock], [DOCK_WIDTH], Qt.Horizontal)
    process_events(0.3)
    return dock, widget


def set_cpu(widget: Any) -> None:
    index = widget.device_combo.findData("cpu")
    if index >= 0:
        widget.device_combo.setCurrentIndex(index)


def show_only(viewer: Any, visible: set[str]) -> None:
    for layer in viewer.layers:
        layer.visible = layer.name in visible


# ----------------------------------------------------------------------------- saving


def save_png(image: Any, path: Path, width: int, max_kb: int) -> None:
    """Save a QImage as PNG: scaled to ``width`` px, palette-reduced / shrunk to fit ``max_kb``."""
    from PIL import Image
    from qtpy.QtCore import QBuffer, QIODevice

    buffer = QBuffer()
    buffer.open(QIODevice.WriteOnly)
    image.save(buffer, "PNG")
    pil = Image.open(io.BytesIO(bytes(buffer.data()))).convert("RGB")
    target = min(width, pil.width)
    while True:
        height = round(pil.height * target / pil.width)
        scaled = pil
        if target != pil.width:
            scaled = pil.resize((target, height), Image.Resampling.LANCZOS)
        for candidate in (scaled, scaled.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                  dither=Image.Dither.NONE)):
            out = io.BytesIO()
            candidate.save(out, "PNG", optimize=True)
            size_kb = out.tell() / 1024
            if size_kb <= max_kb:
                path.write_bytes(out.getvalue())
                log.info("wrote %s (%dx%d, %.0f KB%s)", path, target, height, size_kb,
                         ", 256 colours" if candidate is not scaled else "")
                return
        target = int(target * 0.9)
        if target < 600:
            raise RuntimeError(f"cannot fit {path.name} into {max_kb} KB")


def grab(viewer: Any, name: str, args: argparse.Namespace) -> Path:
    """Screenshot the whole window (canvas, layer list and docks) into ``<out>/<name>.png``."""
    hide_toasts(viewer)
    process_events(1.0)  # let the canvas and the plots repaint
    hide_toasts(viewer)
    image = viewer.window._qt_window.grab().toImage()
    path = Path(args.out) / f"{name}.png"
    save_png(image, path, args.width, args.max_kb)
    return path


# ----------------------------------------------------------------------------- the steps


def train_step(viewer: Any, docks: list[Any], work: Path, args: argparse.Namespace) -> Any:
    """Train a cpu-preset ensemble through the Train widget; return the widget."""
    dock, train = show_dock(viewer, "Train / fine-tune", docks)
    train.preset_combo.setCurrentText("cpu")
    train.arch_combo.setCurrentText("pipeline")
    train.epochs_spin.setValue(1000)  # the time limit ends the run
    train.minutes_spin.setValue(args.minutes)
    train.ensemble_spin.setValue(args.ensemble)
    set_cpu(train)
    train.crop_spin.setValue(128)
    train.batch_spin.setValue(4)
    train.seed_spin.setValue(SEED)
    out = work / "run"
    train.output_edit.set_path(out)
    results: list[Any] = []
    train.finished.connect(results.append)
    train.failed.connect(lambda exc: results.append(exc))
    log.info("training %d x cpu preset on slices %s for %.1f min", args.ensemble,
             f"{TRAIN_SLICES[0]}-{TRAIN_SLICES[-1]}", args.minutes)
    train.train_on(viewer.layers[IMAGE], viewer.layers[SAMPLE_LABELS], slices=TRAIN_SLICES,
                   output_dir=str(out))
    wait_until(lambda: not train.is_running(), args.minutes * 60 + 240, "training")
    if not results or isinstance(results[-1], Exception):
        raise RuntimeError(f"training failed: {train.status_label.text()}")
    result = results[-1]
    log.info("best validation Dice per member: %s", result.best_val_dice)
    if not train.best_checkpoints:
        raise RuntimeError("training wrote no best.pt")
    grab(viewer, "train", args)
    return train


def inspect_step(viewer: Any, docks: list[Any], args: argparse.Namespace) -> None:
    """Fig. 6 on the held-out slice: raw | normalized in grid mode, histograms in the dock."""
    from napari_fcres.widgets.inspect import grid_of

    dock, inspect = show_dock(viewer, "Inspect normalization", docks)
    set_cpu(inspect)
    inspect.image_combo.set_layer(IMAGE)
    inspect.labels_combo.set_layer(SAMPLE_LABELS)
    inspect.slice_radio.setChecked(True)
    viewer.dims.set_current_step(0, SHOWN_SLICE)
    click(inspect.show_button)
    wait_until(lambda: not inspect.is_running(), 120, "inspect")
    if inspect.last_result is None:
        raise RuntimeError(f"inspect failed: {inspect.status_label.text()}")
    show_only(viewer, {IMAGE, inspect.normalized_layer_name(viewer.layers[IMAGE])})
    grid = grid_of(viewer)
    grid.enabled = True
    viewer.reset_view()
    grab(viewer, "inspect", args)
    grid.enabled = False


def predict_step(viewer: Any, docks: list[Any], train: Any, args: argparse.Namespace) -> dict:
    """Predict the whole stack with the trained ensemble (ticked automatically)."""
    dock, predict = show_dock(viewer, "Predict", docks)
    set_cpu(predict)
    predict.image_combo.set_layer(IMAGE)
    predict.mode_combo.setCurrentText("instances")
    predict.tta_check.setChecked(False)
    ticked = predict.checkpoint_list.checked()
    if sorted(map(str, ticked)) != sorted(map(str, train.best_checkpoints)):
        log.warning("ticked checkpoints %s differ from the trained ones; using those", ticked)
        predict.checkpoint_list.set_checkpoints(train.best_checkpoints)
    done: list[dict] = []
    predict.finished.connect(done.append)
    click(predict.stack_button)
    wait_until(lambda: not predict.is_running(), 180, "prediction")
    if not done:
        raise RuntimeError(f"prediction failed: {predict.status_label.text()}")
    names = done[-1]["layers"]
    show_only(viewer, {IMAGE, names["probability"], names["labels"]})
    viewer.dims.set_current_step(0, SHOWN_SLICE)
    viewer.layers.selection.active = viewer.layers[names["labels"]]
    viewer.reset_view()
    grab(viewer, "predict", args)
    return names


def split_line(plane: np.ndarray) -> tuple[int, np.ndarray]:
    """A label of ``plane`` worth cutting and a line across it: ``(label, (2, 2) points)``.

    Picks a large, convex cell and cuts it through its centre along its short axis.
    """
    from skimage.measure import regionprops

    props = [p for p in regionprops(plane) if p.area >= 150 and p.solidity > 0.85]
    if not props:
        props = sorted(regionprops(plane), key=lambda p: p.area)[-1:]
    if not props:
        raise RuntimeError("no label to split on the shown slice")
    best = max(props, key=lambda p: p.area * p.solidity)
    coords = best.coords.astype(float)
    centre = coords.mean(axis=0)
    evals, evecs = np.linalg.eigh(np.cov((coords - centre).T))
    short_axis = evecs[:, int(np.argmin(evals))]
    along = (coords - centre) @ short_axis
    ends = [centre + short_axis * (along.min() - 3), centre + short_axis * (along.max() + 3)]
    return int(best.label), np.asarray(ends)


def correct_step(viewer: Any, docks: list[Any], names: dict, args: argparse.Namespace) -> None:
    """A threshold change and a split along a drawn line on the shown slice."""
    from napari_fcres.widgets.correct import SCOPES, SPLIT_LAYER_NAME

    dock, correct = show_dock(viewer, "Correct", docks)
    labels = viewer.layers[names["labels"]]
    correct.labels_combo.set_layer(labels)
    correct.prob_combo.set_layer(names["probability"])
    correct.scope_combo.setCurrentText(SCOPES[0])  # current slice
    viewer.dims.set_current_step(0, SHOWN_SLICE)
    correct.threshold_spin.setValue(args.threshold)
    correct.commit_threshold()  # as the spin box does shortly after the last change
    process_events(0.2)
    log.info("threshold: %s", correct.status_label.text())

    click(correct.draw_line_button)  # adds the split-line shapes layer in add_path mode
    shapes = viewer.layers[SPLIT_LAYER_NAME]
    label, ends = split_line(np.asarray(labels.data[SHOWN_SLICE]))
    path = np.column_stack([np.full(len(ends), float(SHOWN_SLICE)), ends])
    shapes.add_paths([path])  # what clicking along the cut in add_path mode draws
    process_events(0.2)
    log.info("splitting label %d along %s", label, np.round(ends, 1).tolist())
    click(correct.split_button)
    log.info("split: %s", correct.status_label.text())
    if "Split label" not in correct.status_label.text():
        raise RuntimeError(f"split failed: {correct.status_label.text()}")
    shapes.mode = "pan_zoom"
    show_only(viewer, {IMAGE, names["labels"], shapes.name})
    labels.opacity = 0.6
    viewer.layers.selection.active = labels
    viewer.reset_view()
    grab(viewer, "correct", args)


def export_step(viewer: Any, docks: list[Any], names: dict, work: Path,
                args: argparse.Namespace) -> None:
    """Export the corrected labels and the image as a training pair."""
    dock, export = show_dock(viewer, "Export and retrain", docks)
    export.image_combo.set_layer(IMAGE)
    export.labels_combo.set_layer(names["labels"])
    export.folder_edit.set_path(work / "training-pairs")
    written: list[dict] = []
    export.exported.connect(written.append)
    process_events(0.5)  # the corrected-slices count follows edits after a short delay
    click(export.export_button)
    wait_until(lambda: bool(written), 30, "export")
    log.info("exported %s; corrected: %s", sorted(p.name for p in written[-1].values()),
             export.corrected_label.text())
    show_only(viewer, {IMAGE, names["labels"]})
    viewer.layers.selection.active = viewer.layers[names["labels"]]
    grab(viewer, "export", args)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DOCS), help="folder of the PNGs (default: docs/)")
    p.add_argument("--minutes", type=float, default=6.0,
                   help="training budget of the whole ensemble in minutes (default 6)")
    p.add_argument("--ensemble", type=int, default=2, help="ensemble members (default 2)")
    p.add_argument("--threshold", type=float, default=0.6,
                   help="threshold set in the Correct widget (default 0.6)")
    p.add_argument("--width", type=int, default=1400, help="PNG width in pixels")
    p.add_argument("--max-kb", type=int, default=380, help="largest PNG size in KB")
    p.add_argument("--keep", action="store_true", help="keep the temporary run folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    work = Path(tempfile.mkdtemp(prefix="fcres-screenshots-"))
    # napari's settings (window geometry, notification level) in a throw-away file
    os.environ["NAPARI_CONFIG"] = str(work / "napari-settings.yaml")
    os.environ.setdefault("NAPARI_FCRES_TRAIN_THREADS", str(os.cpu_count() or 1))
    random.seed(SEED)
    np.random.seed(SEED)
    import torch

    torch.manual_seed(SEED)

    import napari
    from napari.settings import get_settings

    settings = get_settings()
    settings.application.gui_notification_level = "none"  # no toasts over the data
    settings.application.save_window_geometry = False
    settings.application.save_window_state = False

    Path(args.out).mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-fcres", show=True)
    try:
        window = viewer.window._qt_window
        window.resize(*WINDOW_SIZE)
        window.move(0, 0)
        viewer.open_sample(PLUGIN, "synthetic_em")
        viewer.dims.set_current_step(0, SHOWN_SLICE)
        process_events(0.5)
        docks: list[Any] = []
        t0 = time.monotonic()
        train = train_step(viewer, docks, work, args)
        inspect_step(viewer, docks, args)
        names = predict_step(viewer, docks, train, args)
        correct_step(viewer, docks, names, args)
        export_step(viewer, docks, names, work, args)
        log.info("all screenshots in %.0f s", time.monotonic() - t0)
    finally:
        viewer.close()
        if args.keep:
            log.info("run folder kept: %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
