"""DDP training on 2 CPU processes (gloo): equivalence, stop, resume; torchrun + CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_fcres import training
from napari_fcres.augment import CropSampler
from napari_fcres.checkpoint import read_checkpoint
from napari_fcres.config import Config, preset_config
from napari_fcres.distributed import DistContext, global_dice_loss, init_from_env
from napari_fcres.io import write_image
from napari_fcres.losses import dice_loss
from napari_fcres.sample_data import synthetic_em_stack

pytestmark = [
    pytest.mark.skipif(
        not torch.distributed.is_available(), reason="torch.distributed is not available"
    ),
    pytest.mark.usefixtures("one_thread_module"),
]

WORLD = 2
PER_RANK_BATCH = 2


def _config(steps: int, epochs: int, batch_size: int) -> Config:
    # ``unet`` without its batch norms (input and blocks) has none at all, so DDP on CPU (no
    # SyncBatchNorm) equals one process on the union batch.  PyTorch's default init: with
    # He init the allreduce's float rounding (a sum of two half-batches, not one batch)
    # is amplified within a few RMSprop steps (measured: uninterrupted DDP and the
    # reference part at step 5 by 1e-4, at step 6 by 7e-3), so exact equality would test
    # rounding, not the loss reduction, the crop streams or the resume.  The other pre-fix
    # settings likewise (2x2 merges, coupled decay, no warm-up): this tests DDP, not the recipe.
    cfg = preset_config("tiny", architecture="unet")
    unet = dataclasses.replace(cfg.model.unet, input_norm="none", block_norm="none",
                               merge_kernel=2)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, unet=unet, init="torch"))
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, epochs=epochs, steps_per_epoch=steps, crop_size=32, batch_size=batch_size,
        device="cpu", lr=3e-3, patience_steps=1000, warmup_steps=0, weight_decay_mode="coupled",
    ))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, out: str, cfg: dict, image: np.ndarray,
               labels: np.ndarray, resume: bool, stop_after: int | None, tag: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist = init_from_env("cpu")
    calls = [0]

    def should_stop() -> bool:  # only rank 0 asks to stop: every rank must follow
        calls[0] += 1
        return rank == 0 and stop_after is not None and calls[0] > stop_after

    try:
        reports = list(training.train(Config.from_dict(cfg), image, labels, out, resume=resume,
                                      should_stop=should_stop, dist=dist))
    finally:
        dist.close()
    rows = [(r.step, r.loss) for r in reports if r.kind == "step"]
    vals = [r.val_dice for r in reports if r.kind == "validation"]
    Path(out, f"{tag}_rank{rank}.json").write_text(json.dumps({"steps": rows, "val": vals}))


def _spawn(*args) -> None:
    torch.multiprocessing.spawn(_rank_main, args=(_free_port(), *args), nprocs=WORLD, join=True)


class UnionSampler:
    """One process drawing what rank 0 and rank 1 draw (generators seeded seed + rank)."""

    def __init__(self, data, crop_size, augment, generator) -> None:
        seed = generator.initial_seed()
        self.parts = [CropSampler(data, crop_size, augment,
                                  torch.Generator().manual_seed(seed + r)) for r in range(WORLD)]

    def sample(self, batch_size: int):
        rows = [p.sample(batch_size // WORLD) for p in self.parts]
        return tuple(torch.cat(parts) for parts in zip(*rows))


@pytest.fixture(scope="module")
def stack():
    return synthetic_em_stack(shape=(4, 64, 64), seed=1)


def test_global_dice_equals_single_process_dice():
    """Without a process group the context is a no-op and uses the plain losses."""
    ctx = DistContext()
    assert not ctx.enabled and ctx.is_main and ctx.any(True) and not ctx.any(False)
    assert ctx.broadcast_float(0.25) == 0.25 and ctx.gather_objects(3) == [3]
    assert ctx.loss("dice") is dice_loss
    assert init_from_env("cpu").world_size == 1


def test_sync_batchnorm_conversion_keeps_checkpoints():
    """CUDA ranks swap BatchNorm for SyncBatchNorm: same state dict, same eval output."""
    from napari_fcres.models import build_model

    torch.manual_seed(0)
    model = build_model(preset_config("tiny").model).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        before = model(x)
    keys = list(model.state_dict())
    gpu_rank = DistContext(rank=0, world_size=2, device=torch.device("cuda", 0))
    converted = gpu_rank.convert_batchnorm(model)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
    assert list(converted.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(converted.eval()(x), before)
    cpu_rank = DistContext(rank=0, world_size=2, device=torch.device("cpu"))
    plain = build_model(preset_config("tiny").model)
    assert cpu_rank.convert_batchnorm(plain) is plain
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in plain.modules())


def test_ddp_equals_one_process_on_the_union_batch(tmp_path, stack, monkeypatch):
    image, labels = stack
    steps, epochs = 4, 3
    ddp_cfg = _config(steps, epochs, PER_RANK_BATCH).to_dict()
    out = tmp_path / "ddp"
    # run 1: rank 0 asks to stop after 6 steps; run 2 resumes to the end
    _spawn(str(out), ddp_cfg, image, labels, False, 6, "first")
    first = [json.loads((out / f"first_rank{r}.json").read_text()) for r in range(WORLD)]
    assert first[0]["steps"] == first[1]["steps"]  # global loss: same on every rank
    assert len(first[0]["steps"]) == 6
    stopped = read_checkpoint(out / "member_00" / "last.pt")
    assert stopped["step"] == 6 and not stopped["finished"]
    assert len(stopped["rng_state_ranks"]) == WORLD
    _spawn(str(out), ddp_cfg, image, labels, True, None, "second")
    second = [json.loads((out / f"second_rank{r}.json").read_text()) for r in range(WORLD)]
    assert second[0] == second[1]  # losses and broadcast validation Dice agree
    ddp_losses = [loss for _, loss in first[0]["steps"] + second[0]["steps"]]
    assert len(ddp_losses) == steps * epochs

    # one process, global batch = union of the ranks' crops, no interruption
    monkeypatch.setattr(training, "CropSampler", UnionSampler)
    ref_cfg = _config(steps, epochs, PER_RANK_BATCH * WORLD)
    reports = list(training.train(ref_cfg, image, labels, tmp_path / "single"))
    ref_losses = [r.loss for r in reports if r.kind == "step"]
    np.testing.assert_allclose(ddp_losses, ref_losses, rtol=1e-5, atol=1e-6)
    assert np.mean(ddp_losses[-4:]) < np.mean(ddp_losses[:4])  # it learns

    ddp = read_checkpoint(out / "member_00" / "last.pt")["model_state"]
    ref = read_checkpoint(tmp_path / "single" / "member_00" / "last.pt")["model_state"]
    worst = 0.0
    for key, value in ref.items():
        diff = (ddp[key].float() - value.float()).abs().max().item()
        worst = max(worst, diff / (value.float().abs().max().item() + 1e-12))
    assert worst < 1e-5, f"largest relative parameter difference {worst:.2e}"


def test_torchrun_cli_ensemble_parallel(tmp_path, stack):
    image, labels = stack
    write_image(tmp_path / "image.tif", image)
    write_image(tmp_path / "labels.tif", labels)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
        "-m", "napari_fcres.cli", "-q", "train", str(tmp_path / "image.tif"),
        str(tmp_path / "labels.tif"), "--out", str(tmp_path / "run"), "--preset", "tiny",
        "--crop-size", "32", "--batch-size", "2", "--epochs", "2", "--steps-per-epoch", "3",
        "--device", "cpu", "--ensemble", "2", "--ensemble-parallel",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8",
                          errors="replace", env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # "final validation" (4 slices: the run keeps its final weights), else "best validation"
    lines = [ln for ln in proc.stdout.splitlines() if "best.pt\t" in ln and " validation " in ln]
    assert len(lines) == 2, proc.stdout  # printed once, by rank 0, for both members
    for member in range(2):
        ck = read_checkpoint(tmp_path / "run" / f"member_{member:02d}" / "last.pt")
        assert ck["member"] == member and ck["step"] == 6 and ck["finished"]
        assert "rng_state_ranks" not in ck  # trained alone, not with DDP


def test_global_dice_loss_needs_a_process_group():
    logits = torch.zeros(1, 1, 2, 2)
    with pytest.raises((RuntimeError, ValueError)):
        global_dice_loss(logits, torch.ones_like(logits))
