"""Render the README screenshots of all six napari-fcres docks open at once, at two sizes.

Run from the repository root under Xvfb (a few minutes on 2 CPU cores)::

    xvfb-run -a -s "-screen 0 1900x1150x24" python docs/make_dock_screenshots.py

It opens the synthetic EM sample and, as a user does from the Plugins menu, all six widgets
(Train, Predict, Correct, Export, Inspect, Export model), trains a ``tiny`` model through the
Train widget, predicts the stack with it, and saves:

* ``docs/all_docks_1900.png`` - a 1900x1150 window, the Train tab in front (plot and status);
* ``docs/all_docks_1366.png`` - a 1366x768 window, the Correct tab in front.

``--every-tab DIR`` also saves each tab at both sizes into ``DIR`` (to look at them all).
Runs and napari's settings go to a temporary folder; notifications are off.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS))

from make_screenshots import (  # noqa: E402 - the helpers of the per-widget screenshots
    IMAGE,
    PLUGIN,
    SAMPLE_LABELS,
    hide_toasts,
    process_events,
    save_png,
    set_cpu,
    wait_until,
)

log = logging.getLogger("make_dock_screenshots")

#: The widgets in the order a user opens them, with their tab titles.
WIDGETS = (("Train / fine-tune", "Train"), ("Predict", "Predict"), ("Correct", "Correct"),
           ("Export and retrain", "Export"), ("Inspect normalization", "Inspect"),
           ("Export model (bioimage.io)", "Export model"))
SIZES = {"1900": (1900, 1150), "1366": (1366, 768)}
SHOWN_SLICE = 5


def raise_tab(widget: Any) -> None:
    """Bring a widget's dock tab to the front (as a click on its tab does)."""
    from napari_fcres.widgets._docks import dock_of

    dock = dock_of(widget)
    dock.show()
    dock.raise_()
    process_events(0.5)


def grab(viewer: Any, path: Path, width: int, max_kb: int) -> None:
    hide_toasts(viewer)
    process_events(1.0)
    hide_toasts(viewer)
    save_png(viewer.window._qt_window.grab().toImage(), path, width, max_kb)


def resize(viewer: Any, size: tuple[int, int]) -> None:
    window = viewer.window._qt_window
    window.showNormal()
    window.resize(*size)
    window.move(0, 0)
    process_events(1.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DOCS), help="folder of the PNGs (default: docs/)")
    p.add_argument("--epochs", type=int, default=6, help="epochs of the tiny model")
    p.add_argument("--max-kb", type=int, default=400, help="largest PNG size in KB")
    p.add_argument("--every-tab", default=None, help="also save every tab at both sizes here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    work = Path(tempfile.mkdtemp(prefix="fcres-dock-screenshots-"))
    os.environ["NAPARI_CONFIG"] = str(work / "napari-settings.yaml")

    import napari
    from napari.settings import get_settings

    settings = get_settings()
    settings.application.gui_notification_level = "none"
    settings.application.save_window_geometry = False
    settings.application.save_window_state = False
    viewer = napari.Viewer(title="napari-fcres", show=True)
    try:
        resize(viewer, SIZES["1900"])
        viewer.open_sample(PLUGIN, "synthetic_em")
        widgets = {}
        for display, title in WIDGETS:  # as Plugins > napari-fcres > ... does
            widgets[title] = viewer.window.add_plugin_dock_widget(PLUGIN, display)[1]
            process_events(0.3)

        train = widgets["Train"]
        raise_tab(train)
        train.preset_combo.setCurrentText("tiny")
        train.epochs_spin.setValue(args.epochs)
        train.minutes_spin.setValue(0)
        train.crop_spin.setValue(128)
        set_cpu(train)
        train.output_edit.set_path(work / "run")
        train.train_on(viewer.layers[IMAGE], viewer.layers[SAMPLE_LABELS],
                       output_dir=str(work / "run"))
        wait_until(lambda: not train.is_running(), 900, "training")
        if not train.best_checkpoints:
            raise RuntimeError(f"training failed: {train.status_label.text()}")

        predict = widgets["Predict"]
        raise_tab(predict)
        set_cpu(predict)
        predict.image_combo.set_layer(IMAGE)
        predict.predict_stack()
        wait_until(lambda: not predict.is_running(), 600, "prediction")
        viewer.dims.set_current_step(0, SHOWN_SLICE)
        predicted = f"{IMAGE} predicted labels"
        if predicted not in viewer.layers:
            raise RuntimeError(f"prediction failed: {predict.status_label.text()}")
        widgets["Correct"].labels_combo.set_layer(predicted)
        viewer.layers.selection.active = viewer.layers[predicted]

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        shots = {"1900": widgets["Train"], "1366": widgets["Correct"]}
        for key, size in SIZES.items():
            resize(viewer, size)
            if args.every_tab:
                folder = Path(args.every_tab)
                folder.mkdir(parents=True, exist_ok=True)
                for _, title in WIDGETS:
                    raise_tab(widgets[title])
                    name = title.lower().replace(" ", "_")
                    grab(viewer, folder / f"{key}_{name}.png", size[0], 4000)
            raise_tab(shots[key])
            grab(viewer, out / f"all_docks_{key}.png", size[0], args.max_kb)
    finally:
        viewer.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
