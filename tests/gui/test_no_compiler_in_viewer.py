"""Issue 10: with a CUDA build of torch, importing triton in napari's process (software
OpenGL) segfaults napari.  Training and prediction run in a worker process, so napari's
process must never import torch's compiler stack (``torch._dynamo``, which imports triton).

Checked in a fresh interpreter, since this test session itself trains in-process elsewhere.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.gui

SCRIPT = textwrap.dedent('''
    import sys, time
    import napari
    from napari_fcres._sample_data import synthetic_em
    from napari_fcres.widgets.train import TrainWidget
    from napari_fcres.widgets.predict import PredictWidget

    viewer = napari.Viewer(show=True)
    (image, _, _), (labels, _, _) = synthetic_em()
    img = viewer.add_image(image[:3, :64, :64], name="em")
    lab = viewer.add_labels(labels[:3, :64, :64].copy(), name="em labels")
    app = napari.qt.get_qapp()
    _, train = viewer.window.add_plugin_dock_widget("napari-fcres", "Train / fine-tune")
    for display in ("Inspect normalization", "Predict", "Correct", "Export and retrain",
                    "Export model (bioimage.io)"):
        viewer.window.add_plugin_dock_widget("napari-fcres", display)
    train.preset_combo.setCurrentText("tiny")
    train.epochs_spin.setValue(1)
    train.minutes_spin.setValue(0)
    train.crop_spin.setValue(32)
    train.device_combo.setCurrentIndex(train.device_combo.findData("cpu"))
    train.output_edit.set_path(sys.argv[1])
    done = []
    train.finished.connect(done.append)
    train.train_on(img, lab)
    end = time.time() + 120
    while not done and time.time() < end:
        app.processEvents()
        time.sleep(0.01)
    assert done and done[0].best_checkpoints, "training did not finish"
    predict = PredictWidget(viewer)
    viewer.window.add_dock_widget(predict)
    predict.image_combo.set_layer(img)
    predict.checkpoint_list.set_checkpoints([done[0].best_checkpoints[0]])
    predict.device_combo.setCurrentIndex(predict.device_combo.findData("cpu"))
    predict.predict_stack()
    while predict.is_running() and time.time() < end:
        app.processEvents()
        time.sleep(0.01)
    assert "em labels" in [la.name for la in viewer.layers] and len(viewer.layers) > 2
    loaded = sorted(m for m in ("torch._dynamo", "triton", "torch._inductor") if m in sys.modules)
    print("LOADED", loaded)
    viewer.close()
''')


def test_training_and_prediction_never_import_the_compiler_stack_into_napari(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "LOADED []" in proc.stdout, out[-3000:]
