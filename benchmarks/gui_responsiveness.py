"""How responsive does napari stay while the widgets train, predict and inspect?

Opens a viewer with the synthetic EM sample, docks the Train, Predict and Inspect widgets and
measures the gaps between ticks of a 10 ms ``QTimer`` on the GUI thread (a gap is how long the
GUI could not react) during: training (its first seconds separately: start-up), prediction
of the whole stack with the trained checkpoint, and inspection of the whole stack.  Prints
the largest gap, the 99th percentile and the median of each, and the idle viewer's for
reference.  ``--worker thread`` runs the jobs in a thread of napari's process (the design
before worker processes) for comparison.  Run under a display, e.g.::

    xvfb-run -a python benchmarks/gui_responsiveness.py --preset cpu --seconds 30
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

import numpy as np

log = logging.getLogger("gui_responsiveness")


def measure(app, seconds: float, interval_ms: int = 10, until=None) -> np.ndarray:
    """Gaps (ms) between timer ticks over ``seconds`` (or until ``until()`` is true)."""
    from qtpy.QtCore import QTimer

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(interval_ms)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and not (until is not None and until()):
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    return np.diff(np.asarray(ticks)) * 1000.0


def summary(name: str, gaps: np.ndarray) -> str:
    if gaps.size == 0:
        return f"{name}: no ticks"
    return (f"{name}: {gaps.size} ticks, max gap {gaps.max():.1f} ms, "
            f"p99 {np.percentile(gaps, 99):.1f} ms, median {np.median(gaps):.1f} ms")


def wait(app, busy) -> np.ndarray:
    """Tick gaps while ``busy()`` holds (at most 10 minutes)."""
    return measure(app, 600.0, until=lambda: not busy())


def a_checkpoint(out: str, preset: str, image: np.ndarray, labels: np.ndarray) -> str:
    """The run's best.pt, or (stopped before its first validation) a quick headless one."""
    import dataclasses
    from pathlib import Path

    from napari_fcres.config import preset_config
    from napari_fcres.training import run_training

    found = sorted(Path(out).rglob("best.pt"))
    if found:
        return str(found[0])
    cfg = preset_config(preset)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, epochs=1, steps_per_epoch=2, crop_size=64, device="cpu"))
    folder = Path(out) / "headless"
    run_training(cfg, image, labels, folder)
    return str(sorted(folder.rglob("best.pt"))[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "small"])
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of training")
    parser.add_argument("--startup-seconds", type=float, default=3.0,
                        help="the first seconds of training, reported on their own")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the training worker (default: the widget's)")
    parser.add_argument("--worker", choices=["process", "thread"], default="process",
                        help="where jobs run: a worker process (default) or a thread")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads is not None:
        os.environ["NAPARI_FCRES_TRAIN_THREADS"] = str(args.threads)
    os.environ["NAPARI_FCRES_WORKER"] = args.worker

    import napari
    from napari.utils._proxies import PublicOnlyProxy

    from napari_fcres.widgets.inspect import InspectWidget
    from napari_fcres.widgets.predict import PredictWidget
    from napari_fcres.widgets.train import TrainWidget
    from napari_fcres.worker_process import cpu_threads_for_worker

    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-fcres", "synthetic_em")
    proxy = PublicOnlyProxy(viewer)
    widget = TrainWidget(proxy)
    viewer.window.add_dock_widget(widget, name="Train")
    predictor = PredictWidget(proxy)
    viewer.window.add_dock_widget(predictor, name="Predict")
    inspector = InspectWidget(proxy)
    viewer.window.add_dock_widget(inspector, name="Inspect")
    app = napari.qt.get_qapp()
    widget.preset_combo.setCurrentText(args.preset)
    widget.epochs_spin.setValue(10000)
    widget.minutes_spin.setValue(0)
    widget.crop_spin.setValue(args.crop)
    out = tempfile.mkdtemp(prefix="fcres-bench-")
    widget.output_edit.set_path(out)
    image_layer, labels_layer = widget.image_combo.layer(), widget.labels_combo.layer()
    measure(app, 2.0)  # let the window settle

    idle = measure(app, 5.0)
    widget.start_button.click()
    startup = measure(app, args.startup_seconds, until=lambda: not widget.is_running())
    busy = measure(app, max(args.seconds - args.startup_seconds, 0.0),
                   until=lambda: not widget.is_running())
    steps = len(widget.plot_data()["loss"].get(0, ([], []))[0])
    t0 = time.perf_counter()
    widget.stop()
    stopping = wait(app, widget.is_running)
    stop_s = time.perf_counter() - t0

    checkpoint = a_checkpoint(out, args.preset, np.asarray(image_layer.data),
                              np.asarray(labels_layer.data))
    predictor.image_combo.set_layer(image_layer)
    predictor.checkpoint_list.set_checkpoints([checkpoint])
    t0 = time.perf_counter()
    predictor.predict_stack()
    predicting = wait(app, predictor.is_running)
    predict_s = time.perf_counter() - t0

    inspector.image_combo.set_layer(image_layer)
    inspector.checkpoint_combo.set_path(checkpoint)
    t0 = time.perf_counter()
    inspector.show_normalization(whole_stack=True)
    inspecting = wait(app, inspector.is_running)
    inspect_s = time.perf_counter() - t0

    print(f"cpu cores {os.cpu_count()}, jobs in a {args.worker}, worker torch threads "
          f"{cpu_threads_for_worker()}, preset {args.preset}, crop {args.crop}, {steps} training "
          f"steps in {args.seconds:.0f} s, stack {tuple(image_layer.data.shape)}")
    print(summary("idle viewer              ", idle))
    print(summary(f"training, first {args.startup_seconds:.0f} s      ", startup))
    print(summary("training, after that     ", busy))
    print(summary(f"stopping ({stop_s:.1f} s)          ", stopping))
    print(summary(f"predicting stack ({predict_s:.1f} s)", predicting))
    print(summary(f"inspecting stack ({inspect_s:.1f} s)", inspecting))
    viewer.close()


if __name__ == "__main__":
    main()
