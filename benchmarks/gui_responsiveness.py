"""How responsive does napari stay while the widgets train, predict and inspect?

Opens a viewer with the synthetic EM sample, docks the Train, Predict and Inspect widgets and
measures the gaps between ticks of a 10 ms ``QTimer`` on the GUI thread (a gap is how long the
GUI could not react) during: training (its first seconds separately: start-up), prediction
of the whole stack with the trained checkpoint, and inspection of the whole stack.  Then the
moments a user feels most:

* the first Train dock of a fresh session in a fresh home folder (``HOME`` a new temporary
  folder, in a fresh interpreter; then once more with that home: the next session);
* a prediction's result landing in the viewer (its layers added) for a synthetic
  ``--stack`` (default 30x512x512) with 1 and with 2 models (``--models``);
* the start of a fine-tune from the Export widget (one corrected slice of that prediction).

Prints the largest gap, the 99th percentile and the median of each, and the idle viewer's for
reference; the result-landing lines also give how long the widget's handler ran.
``--worker thread`` runs the jobs in a thread of napari's process (the design before worker
processes) for comparison; ``--only`` runs some phases only.  Run under a display, e.g.::

    xvfb-run -a python benchmarks/gui_responsiveness.py --preset cpu --seconds 30
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger("gui_responsiveness")


PHASES = ("train", "predict", "inspect", "first-dock", "result", "finetune")


def measure(app, seconds: float, interval_ms: int = 10, until=None,
            action: Callable[[], None] | None = None) -> np.ndarray:
    """Gaps between timer ticks over ``seconds`` (or until ``until()`` is true): an (n, 2)
    array of the wall-clock gap (ms) and the GUI thread's CPU time in it (ms).

    The CPU time is what the GUI thread itself worked in a gap: the freeze it would be on an
    idle core, whatever else loads the machine (the wall gap also holds waits for the CPU and
    the GIL).  ``action`` runs on the GUI thread (from the event loop) 100 ms after the ticks
    start: a synchronous action's whole duration shows as one gap (the ticks go on for at
    least half a second after it, however long it took).
    """
    from qtpy.QtCore import QTimer

    ticks: list[tuple[float, float]] = []
    timer = QTimer()
    timer.setInterval(interval_ms)
    timer.timeout.connect(lambda: ticks.append((time.perf_counter(), time.thread_time())))
    timer.start()
    acted: list[float] = []
    if action is not None:
        def act() -> None:
            try:
                action()
            finally:
                acted.append(time.perf_counter())

        QTimer.singleShot(100, act)
    end = time.perf_counter() + seconds
    while True:
        now = time.perf_counter()
        if until is not None and until():
            break
        if now >= end and (action is None or (acted and now >= acted[0] + 0.5)):
            break
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    return np.diff(np.asarray(ticks).reshape(-1, 2), axis=0) * 1000.0


def summary(name: str, gaps: np.ndarray) -> str:
    """Largest gap, 99th percentile and median of the wall gaps, and the largest CPU gap."""
    if gaps.size == 0:
        return f"{name}: no ticks"
    wall, cpu = gaps[:, 0], gaps[:, 1]
    return (f"{name}: {len(wall)} ticks, max gap {wall.max():.1f} ms "
            f"(GUI-thread CPU {cpu.max():.1f} ms), p99 {np.percentile(wall, 99):.1f} ms, "
            f"median {np.median(wall):.1f} ms")


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


FIRST_DOCK_SCRIPT = """
import sys, time
import napari
sys.path.insert(0, {bench!r})
from gui_responsiveness import measure, summary

viewer = napari.Viewer(show=True)
app = napari.qt.get_qapp()
measure(app, 2.0)  # napari's own first-session work
gaps = measure(app, 4.0, action=lambda: viewer.window.add_plugin_dock_widget(
    "napari-fcres", "Train / fine-tune"))
print("RESULT", summary({label!r}, gaps))
viewer.close()
"""


def first_dock_phase(bench_dir: Path) -> list[str]:
    """The first Train dock of a session in a fresh home folder, then of the next session."""
    home = Path(tempfile.mkdtemp(prefix="fcres-home-"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "NAPARI_CONFIG")}
    env["HOME"] = str(home)
    lines = []
    try:
        for label in ("first Train dock, fresh home", "first Train dock, next session"):
            script = FIRST_DOCK_SCRIPT.format(bench=str(bench_dir), label=f"{label:<26}")
            proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                                  text=True, timeout=600)
            found = [ln[7:] for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            lines += found or [f"{label}: failed ({proc.stderr.strip()[-400:]})"]
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return lines


class Report(list):
    """Result lines: printed (to stderr) as they come, and all together at the end."""

    def append(self, line: str) -> None:
        super().append(line)
        print(line, file=sys.stderr, flush=True)

    def __iadd__(self, lines):
        for line in lines:
            self.append(line)
        return self

    def print_all(self) -> None:
        for line in self:
            print(line, flush=True)


def timed(widget, name: str, durations: list[float]) -> None:
    """Record how long ``widget.<name>`` (a GUI-thread handler) runs, in ``durations`` (ms)."""
    original = getattr(widget, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            durations.append((time.perf_counter() - t0) * 1000.0)

    setattr(widget, name, wrapper)


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
    parser.add_argument("--stack", default="30,512,512",
                        help="z,y,x of the synthetic stack whose prediction lands (result)")
    parser.add_argument("--models", default="1,2",
                        help="ensemble sizes of the result phase (comma-separated)")
    parser.add_argument("--checkpoint", default=None,
                        help="a trained best.pt to predict with (default: the training phase's)")
    parser.add_argument("--only", default="",
                        help=f"comma-separated phases to run ({', '.join(PHASES)}; default all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads is not None:
        os.environ["NAPARI_FCRES_TRAIN_THREADS"] = str(args.threads)
    os.environ["NAPARI_FCRES_WORKER"] = args.worker
    phases = set(args.only.split(",")) if args.only else set(PHASES)
    unknown = phases - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    report = Report()

    # before napari: the fresh-home phase runs in its own interpreters
    if "first-dock" in phases:
        report += first_dock_phase(Path(__file__).resolve().parent)

    import napari
    from napari.utils._proxies import PublicOnlyProxy

    from napari_fcres.widgets.export import ExportWidget
    from napari_fcres.widgets.inspect import InspectWidget
    from napari_fcres.widgets.predict import PredictWidget
    from napari_fcres.widgets.train import TrainWidget
    from napari_fcres.worker_process import cpu_threads_for_worker

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1900, 1150)
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

    report.append(summary("idle viewer              ", measure(app, 5.0)))
    steps = 0
    if "train" in phases:
        widget.start_button.click()
        startup = measure(app, args.startup_seconds, until=lambda: not widget.is_running())
        busy = measure(app, max(args.seconds - args.startup_seconds, 0.0),
                       until=lambda: not widget.is_running())
        steps = len(widget.plot_data()["loss"].get(0, ([], []))[0])
        t0 = time.perf_counter()
        widget.stop()
        stopping = wait(app, widget.is_running)
        stop_s = time.perf_counter() - t0
        report.append(summary(f"training, first {args.startup_seconds:.0f} s      ", startup))
        report.append(summary("training, after that     ", busy))
        report.append(summary(f"stopping ({stop_s:.1f} s)          ", stopping))

    checkpoint = args.checkpoint or a_checkpoint(out, args.preset, np.asarray(image_layer.data),
                                                 np.asarray(labels_layer.data))
    if "predict" in phases:
        predictor.image_combo.set_layer(image_layer)
        predictor.checkpoint_list.set_checkpoints([checkpoint])
        t0 = time.perf_counter()
        predictor.predict_stack()
        predicting = wait(app, predictor.is_running)
        report.append(summary(f"predicting stack ({time.perf_counter() - t0:.1f} s)",
                              predicting))

    if "inspect" in phases:
        inspector.image_combo.set_layer(image_layer)
        inspector.checkpoint_combo.set_path(checkpoint)
        t0 = time.perf_counter()
        inspector.show_normalization(whole_stack=True)
        inspecting = wait(app, inspector.is_running)
        report.append(summary(f"inspecting stack ({time.perf_counter() - t0:.1f} s)",
                              inspecting))

    if phases & {"result", "finetune"}:
        from napari_fcres.sample_data import synthetic_em_stack

        shape = tuple(int(n) for n in args.stack.split(","))
        big_image, _ = synthetic_em_stack(shape, seed=1)
        big = viewer.add_image(big_image, name="EM stack")
        # a second member: the same weights under another path (an ensemble of two files)
        second = Path(out) / "copy" / "member_01" / "best.pt"
        second.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(checkpoint, second)
        handler: list[float] = []
        timed(predictor, "_on_done", handler)
        predictor.image_combo.set_layer(big)
        for n in [int(k) for k in args.models.split(",")] if "result" in phases else [1]:
            predictor.checkpoint_list.set_checkpoints([checkpoint, str(second)][:n])
            done: list[dict] = []
            predictor.finished.connect(done.append)
            t0 = time.perf_counter()
            predictor.predict_stack()
            landing = wait(app, predictor.is_running)
            landing = np.concatenate([landing, measure(app, 1.0)])  # what the landing left
            predictor.finished.disconnect(done.append)
            if not done:
                raise RuntimeError(f"prediction failed: {predictor.status_label.text()}")
            if "result" in phases:
                report.append(summary(
                    f"result lands, {n} model{'s' if n > 1 else ' '} (predicting "
                    f"{time.perf_counter() - t0:.0f} s, handler {handler[-1]:.0f} ms)", landing))
        if "finetune" in phases:
            names = done[-1]["layers"]
            labels = viewer.layers[names["labels"]]
            rr, cc = np.mgrid[100:140, 100:140]
            labels.data_setitem((np.full(rr.size, 3), rr.ravel(), cc.ravel()), 1)  # a correction
            exporter = ExportWidget(proxy)
            viewer.window.add_dock_widget(exporter, name="Export")
            exporter.image_combo.set_layer(big)
            exporter.labels_combo.set_layer(labels)
            measure(app, 1.0)
            tuned = measure(app, 3.0, action=exporter.tune_button.click)
            report.append(summary("fine-tune start          ", tuned))
            widget.stop()
            wait(app, widget.is_running)

    print(f"cpu cores {os.cpu_count()}, jobs in a {args.worker}, worker torch threads "
          f"{cpu_threads_for_worker()}, preset {args.preset}, crop {args.crop}, {steps} training "
          f"steps in {args.seconds:.0f} s, sample stack {tuple(image_layer.data.shape)}, "
          f"result stack {args.stack}")
    report.print_all()
    viewer.close()


if __name__ == "__main__":
    main()
