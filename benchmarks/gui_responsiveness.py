"""How responsive does napari stay while the Train widget trains?

Opens a viewer with the synthetic EM sample, docks the Train widget, starts training and
measures the gaps between ticks of a 10 ms ``QTimer`` on the GUI thread (a gap is how long the
GUI could not react).  Prints the largest gap and the 99th percentile, during training and,
for reference, with the viewer idle.  Run under a display, e.g.::

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "small"])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the training worker (default: the widget's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads is not None:
        os.environ["NAPARI_FCRES_TRAIN_THREADS"] = str(args.threads)

    import napari
    from napari.utils._proxies import PublicOnlyProxy

    from napari_fcres.widgets.train import TrainWidget, _worker_threads

    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-fcres", "synthetic_em")
    widget = TrainWidget(PublicOnlyProxy(viewer))
    viewer.window.add_dock_widget(widget, name="Train")
    app = napari.qt.get_qapp()
    widget.preset_combo.setCurrentText(args.preset)
    widget.epochs_spin.setValue(10000)
    widget.minutes_spin.setValue(0)
    widget.crop_spin.setValue(args.crop)
    widget.output_edit.set_path(tempfile.mkdtemp(prefix="fcres-bench-"))
    measure(app, 2.0)  # let the window settle

    idle = measure(app, 5.0)
    widget.start_button.click()
    busy = measure(app, args.seconds, until=lambda: not widget.is_running())
    steps = len(widget.plot_data()["loss"].get(0, ([], []))[0])
    t0 = time.perf_counter()
    widget.stop()
    while widget.is_running():
        app.processEvents()
        time.sleep(0.005)
    stop_s = time.perf_counter() - t0
    print(f"cpu cores {os.cpu_count()}, worker torch threads {_worker_threads()}, "
          f"preset {args.preset}, crop {args.crop}, {steps} training steps in "
          f"{args.seconds:.0f} s")
    print(summary("idle viewer      ", idle))
    print(summary("during training  ", busy))
    print(f"Stop took {stop_s:.2f} s")
    viewer.close()


if __name__ == "__main__":
    main()
