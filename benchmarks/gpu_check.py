"""The GPU path end to end on one CUDA machine, within a hard wall-clock budget.

One command, for a machine lent for minutes (``BENCHMARKS.md``, "GPU check"):

1. **Training**, two rows side by side on the one GPU (two processes at once;
   ``--sequential`` runs them one after the other): the ``fcres train`` defaults (``cpu``
   preset) and ``--preset paper`` (Tables I and II, the paper's recipe, one model), each
   for ``--minutes`` on ISBI 2012 slices 0-19 with ``--device cuda``, configs built by the
   CLI's own builder (:mod:`napari_fcres.train_config`).  Reported per row: steps/s and
   images/s (training steps only; the whole loop with validation too), peak GPU memory
   (``torch.cuda.max_memory_allocated`` of that process), and held-out V_rand / V_info on
   slices 20-29 for the best checkpoint, single and with 8-fold TTA (the protocol of
   ``isbi_accuracy.py``).
2. **Prediction**: Mpx/s of ``predict`` on a 4096² mosaic of the held-out slices with each
   trained model, in fp32, with bf16 autocast (AMP) and fp32 with channels_last off; max
   |Δp| between them and whether AMP agrees with fp32 (max |Δp| and the fraction of pixels
   that change side of 0.5 within ``--amp-max-diff`` / ``--amp-flip-fraction``).  Then the
   Predict widget's job runs in the widgets' worker process (:mod:`napari_fcres.worker_process`)
   and the card's free memory is read before, during and after it: is it given back?
3. **DDP**: with more than one GPU, one training step on every GPU with NCCL through
   ``torchrun`` and :mod:`napari_fcres.distributed` (SyncBatchNorm, global Dice); with one,
   the report says "1 GPU: DDP/NCCL not run".

Every phase runs in processes of its own (``_gpu_check_phases.py``) with a deadline inside
``--budget-minutes`` (default 8): a phase trims its own work to fit and is killed when it
overruns, and the JSON (``--out``) is written after every phase with what there is.  A short
table is logged at the end.  Only torch, numpy, scipy, scikit-image, tifffile and pyyaml are
needed; the project runs from source (``PYTHONPATH``).

    PYTHONPATH=$PWD python3 benchmarks/gpu_check.py --isbi .gpucheck_data \\
        --out $OUT/gpu_check.json --minutes 3
    python benchmarks/gpu_check.py --dry-run        # the same path on the CPU in seconds

``--dry-run`` uses the ``tiny`` preset, a few steps on 64² crops of the synthetic sample
stack (or of ISBI with ``--isbi``) and a 192² prediction image, on the CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("gpu_check")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PHASES_SCRIPT = HERE / "_gpu_check_phases.py"

#: (row, ``--preset``): None is ``fcres train``'s default (the ``cpu`` preset).
ROWS: tuple[tuple[str, str | None], ...] = (("cpu", None), ("paper", "paper"))
#: Environment variables that size the OpenMP / BLAS thread pools of a child.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: Seconds a phase gets after its deadline to end on SIGTERM before SIGKILL.
KILL_GRACE_S = 5.0
#: Lines of a phase's log kept in the JSON.
LOG_TAIL = 25


@dataclass(frozen=True)
class Plan:
    """Time reserves (seconds) and sizes of a run; :func:`plan_for` picks them."""

    finish_s: float  # kept at the end for the last kill grace and the report
    predict_s: float  # prediction timings and the worker process check
    ddp_s: float  # the DDP step, when it can run
    eval_s: float  # kept by a training row for its final validation and scoring
    predict_size: int
    tile: int
    overlap: int
    repeats: int
    worker_size: int
    worker_s: float  # kept inside the prediction phase for the worker check
    overrides: dict[str, Any] = field(default_factory=dict)  # training settings (dry run)
    preset: str | None = None  # replaces every row's preset (dry run: tiny)


def plan_for(args: argparse.Namespace) -> Plan:
    """The real run's reserves, or the dry run's small ones."""
    if args.dry_run:
        return Plan(finish_s=5, predict_s=40, ddp_s=40 if args.ddp_cpu else 0, eval_s=8,
                    predict_size=192, tile=128, overlap=32, repeats=1, worker_size=128,
                    worker_s=20, preset="tiny",
                    overrides={"crop_size": 64, "batch_size": 2, "epochs": 2,
                               "steps_per_epoch": 2})
    cuda = args.device.startswith("cuda")
    return Plan(finish_s=10, predict_s=100, ddp_s=50 if cuda or args.ddp_cpu else 0,
                eval_s=60, predict_size=args.predict_size, tile=args.tile,
                overlap=args.overlap, repeats=args.repeats, worker_size=2048, worker_s=30)


# ----------------------------------------------------------------------------- phases


@dataclass
class Phase:
    """One child process (or torchrun group) with its spec, log, result file and deadline."""

    name: str
    spec: dict[str, Any]
    work: Path
    nproc: int = 0  # > 0: run under torchrun with this many ranks
    proc: subprocess.Popen | None = None
    started: float = 0.0
    seconds: float = 0.0
    status: str = "pending"
    returncode: int | None = None

    @property
    def spec_path(self) -> Path:
        return self.work / f"{self.name}.spec.json"

    @property
    def log_path(self) -> Path:
        return self.work / f"{self.name}.log"

    @property
    def result_path(self) -> Path:
        return Path(self.spec["result"])

    def command(self) -> list[str]:
        if self.nproc:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={self.nproc}", str(PHASES_SCRIPT), str(self.spec_path)]
        return [sys.executable, str(PHASES_SCRIPT), str(self.spec_path)]

    def start(self, threads: int) -> None:
        self.spec_path.write_text(json.dumps(self.spec, indent=2))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env["PYTHONUNBUFFERED"] = "1"
        env.update(dict.fromkeys(THREAD_ENV, str(threads)))
        with self.log_path.open("w") as out:
            # a process group of its own: the kill at the deadline reaches its children too
            # (the worker process, torchrun's ranks); the session stays the caller's, so
            # whoever ends this command's session ends them as well
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                         env=env, cwd=str(ROOT), process_group=0)
        self.started = time.time()
        self.status = "running"
        log.info("%s: started (pid %d), deadline in %.0f s", self.name, self.proc.pid,
                 self.spec["deadline"] - time.time())

    def poll(self) -> bool:
        """True once the process has ended (killed at its deadline plus the grace if need be)."""
        assert self.proc is not None
        rc = self.proc.poll()
        if rc is None and time.time() > self.spec["deadline"] + KILL_GRACE_S:
            log.warning("%s: past its deadline, killed", self.name)
            self.kill()
            rc = self.proc.returncode
            self.status = "killed at its deadline"
        if rc is None:
            return False
        self.seconds = time.time() - self.started
        self.returncode = rc
        if self.status == "running":
            self.status = "ok" if rc == 0 else f"failed (exit {rc})"
        log.info("%s: %s after %.0f s", self.name, self.status, self.seconds)
        return True

    def kill(self) -> None:
        """SIGTERM to the phase's process group, SIGKILL if it is still there after the grace."""
        assert self.proc is not None
        for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue

    def result(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.result_path.read_text())
        except (OSError, ValueError):
            return None

    def record(self) -> dict[str, Any]:
        lines = self.log_path.read_text(errors="replace").splitlines() \
            if self.log_path.exists() else []
        return {"status": self.status, "seconds": self.seconds, "returncode": self.returncode,
                "log_tail": lines[-LOG_TAIL:]}


def run_phases(phases: list[Phase], threads: int) -> None:
    """Start the phases together and wait until each has ended or been killed.

    If this process is interrupted meanwhile (Ctrl-C, SIGTERM), the phases are killed too.
    """
    running: list[Phase] = []
    try:
        for ph in phases:
            ph.start(threads)
            running.append(ph)
        while running:
            time.sleep(0.2)
            running = [ph for ph in running if not ph.poll()]
    finally:
        for ph in running:
            ph.kill()
            ph.status = "interrupted"


def skip(name: str, why: str) -> dict[str, Any]:
    log.warning("%s: skipped, %s", name, why)
    return {"status": f"skipped: {why}", "seconds": 0.0, "returncode": None, "log_tail": []}


# ----------------------------------------------------------------------------- the run


class Check:
    """The whole run: budget, phases and the report they fill."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan = plan_for(args)
        self.t0 = time.time()
        self.end = self.t0 + 60.0 * args.budget_minutes
        self.device = "cpu" if args.dry_run else args.device
        if args.work_dir:
            self.work = Path(args.work_dir).resolve()
            self.work.mkdir(parents=True, exist_ok=True)
        else:
            self.work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.out = Path(args.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        # absolute: the phases run in the repository root, wherever this was started
        self.data = {"isbi": str(args.isbi.resolve()) if args.isbi else None,
                     "dry_run": args.dry_run}
        self.report: dict[str, Any] = {
            "settings": {
                "dry_run": args.dry_run, "device": self.device, "minutes": args.minutes,
                "budget_minutes": args.budget_minutes, "isbi": self.data["isbi"],
                "mode": "sequential" if args.sequential else
                        "side by side: both trainings at once, two processes on one device",
                "rows": {row: {"preset": self.plan.preset or preset or "cpu",
                               "fcres_train_flags": f"--preset {preset}" if preset else
                               "(defaults)"} for row, preset in ROWS},
                "training_overrides": self.plan.overrides,
                "predict_size": self.plan.predict_size, "tile": self.plan.tile,
                "overlap": self.plan.overlap, "repeats": self.plan.repeats,
                "amp_tolerance": self.amp_tolerance(), "command": sys.argv,
            },
            "phases": {},
        }

    def amp_tolerance(self) -> dict[str, float]:
        return {"max_abs_diff": self.args.amp_max_diff,
                "flipped_fraction": self.args.amp_flip_fraction}

    def threads(self, processes: int = 1) -> int:
        """CPU threads of each of ``processes`` children running at once.

        A dry run uses one: on a small, busy CI machine OpenMP threads that wait for each
        other made a tiny model's forward pass 100 times slower.
        """
        if self.args.dry_run:
            return 1
        return max(1, (os.cpu_count() or 1) // processes)

    def save(self) -> None:
        from _gpu_check_phases import write_json

        self.report["total_seconds"] = time.time() - self.t0
        write_json(self.out, self.report)

    def run(self) -> int:
        log.info("budget %.1f min, device %s, work folder %s", self.args.budget_minutes,
                 self.device, self.work)
        try:
            self.train()
            self.save()
            self.predict()
            self.save()
            self.ddp()
        finally:
            self.save()
            self.write_log()
            if not self.args.work_dir:
                shutil.rmtree(self.work, ignore_errors=True)
        for line in table(self.report):
            log.info("%s", line)
        log.info("wrote %s in %.0f s", self.out, self.report["total_seconds"])
        bad = [n for n, p in self.report["phases"].items()
               if not (p["status"] == "ok" or p["status"].startswith("skipped"))]
        if bad:
            log.error("phases that did not finish: %s", ", ".join(bad))
        return 1 if bad else 0

    # ------------------------------------------------------------------ training
    def train(self) -> None:
        p = self.plan
        train_end = self.end - p.finish_s - p.predict_s - p.ddp_s
        phases = []
        for row, preset in ROWS:
            spec = {"phase": "train", "row": row, "preset": p.preset or preset,
                    "device": self.device, "minutes": self.args.minutes,
                    "eval_reserve_s": p.eval_s, "data": self.data, "overrides": p.overrides,
                    "run_dir": str(self.work / f"run_{row}"),
                    "result": str(self.work / f"train_{row}.json")}
            phases.append(Phase(f"train_{row}", spec, self.work))
        if self.args.sequential:
            for k, ph in enumerate(phases):
                share = (train_end - time.time()) / (len(phases) - k)
                ph.spec["deadline"] = time.time() + share
                ph.spec["threads"] = self.threads()
                run_phases([ph], self.threads())
        else:
            threads = self.threads(len(phases))
            for ph in phases:
                ph.spec["deadline"] = train_end
                ph.spec["threads"] = threads
            run_phases(phases, threads)
        self.report["training"] = {}
        for (row, _), ph in zip(ROWS, phases, strict=True):
            self.report["phases"][ph.name] = ph.record()
            res = ph.result() or {}
            env = res.pop("environment", None)
            if env and "environment" not in self.report:
                self.report["environment"] = env
            self.report["training"][row] = res

    # ------------------------------------------------------------------ prediction
    def predict(self) -> None:
        p = self.plan
        deadline = self.end - p.finish_s - p.ddp_s
        if deadline - time.time() < 20:
            self.report["phases"]["predict"] = skip("predict", "no time left in the budget")
            return
        # paper first: the timing that matters most runs while there is most time
        rows = [{"row": row, "preset": p.preset or preset,
                 "run_dir": str(self.work / f"run_{row}")} for row, preset in reversed(ROWS)]
        spec = {"phase": "predict", "device": self.device, "data": self.data, "rows": rows,
                "size": p.predict_size, "tile": p.tile, "overlap": p.overlap,
                "repeats": p.repeats, "warmup": not self.args.dry_run,
                "amp_tolerance": self.amp_tolerance(),
                "reserve_s": p.worker_s, "min_row_s": 10.0, "worker_min_s": 10.0,
                "worker_size": p.worker_size, "release_tolerance_mib": 64.0,
                "deadline": deadline, "threads": self.threads(),
                "result": str(self.work / "predict.json")}
        ph = Phase("predict", spec, self.work)
        run_phases([ph], self.threads())
        self.report["phases"]["predict"] = ph.record()
        res = ph.result() or {}
        env = res.pop("environment", None)
        if env and "environment" not in self.report:
            self.report["environment"] = env
        self.report["worker_process"] = res.pop("worker_process", {"skipped": "did not run"})
        self.report["prediction"] = res

    # ------------------------------------------------------------------ ddp
    def gpu_count(self) -> int:
        return int((self.report.get("environment") or {}).get("gpu_count") or 0)

    def ddp(self) -> None:
        gpus = self.gpu_count()
        if self.args.ddp_cpu:
            nproc, device = self.args.ddp_cpu, "cpu"
        elif self.device.startswith("cuda") and gpus > 1:
            nproc, device = gpus, "cuda"
        else:
            what = f"{gpus} GPU{'s' if gpus != 1 else ''}"
            self.report["ddp"] = {"status": f"{what}: DDP/NCCL not run"}
            self.report["phases"]["ddp"] = skip("ddp", f"{what}, DDP/NCCL needs two or more")
            return
        deadline = self.end - self.plan.finish_s
        if deadline - time.time() < 20:
            self.report["ddp"] = {"status": "not run: no time left in the budget"}
            self.report["phases"]["ddp"] = skip("ddp", "no time left in the budget")
            return
        _, paper = ROWS[-1]
        spec = {"phase": "ddp", "row": "ddp", "preset": self.plan.preset or paper,
                "device": device, "data": self.data, "overrides": self.plan.overrides,
                "run_dir": str(self.work / "run_ddp"), "deadline": deadline,
                "threads": self.threads(nproc),
                "result": str(self.work / "ddp.json")}
        ph = Phase("ddp", spec, self.work, nproc=nproc)
        run_phases([ph], spec["threads"])
        self.report["phases"]["ddp"] = ph.record()
        ranks = []
        for r in range(nproc):
            path = self.work / f"ddp.rank{r}.json"
            ranks.append(json.loads(path.read_text()) if path.exists() else None)
        losses = [r["losses"][0] for r in ranks if r and r.get("losses")]
        self.report["ddp"] = {
            "status": "ran" if len(losses) == nproc else "incomplete",
            "world_size": nproc, "backend": next((r["backend"] for r in ranks if r), None),
            "ranks": ranks,
            # the Dice is all-reduced over the global batch: every rank must see one loss
            "same_loss_on_every_rank": bool(len(losses) == nproc
                                            and max(losses) - min(losses) <= 1e-6),
        }

    def write_log(self) -> None:
        """Every phase's log, one after the other, beside the JSON (``OUT.log``)."""
        parts = []
        for path in sorted(self.work.glob("*.log")):
            parts.append(f"===== {path.stem} =====\n{path.read_text(errors='replace')}")
        if parts:
            self.out.with_suffix(".log").write_text("\n".join(parts))


# ----------------------------------------------------------------------------- report


def _num(value: Any, fmt: str = "{:.3g}") -> str:
    return "–" if value is None else fmt.format(value)


def table(report: dict[str, Any]) -> list[str]:
    """The report as short markdown tables (training, prediction) and two lines."""
    env = report.get("environment") or {}
    lines = [f"GPU check on {env.get('gpu') or env.get('device', '?')} "
             f"(torch {env.get('torch', '?')}, {report['settings']['mode']})", "",
             "| preset | steps/s | images/s | peak GPU memory | V_rand | V_rand TTA | "
             "V_info | V_info TTA |", "|---|---|---|---|---|---|---|---|"]
    for row, res in (report.get("training") or {}).items():
        tr = res.get("training") or {}
        peak = (tr.get("gpu_peak") or {}).get("allocated_mib")
        ev = res.get("evaluation") or {}
        single, tta = ev.get("single") or {}, ev.get("tta") or {}
        lines.append(
            f"| {row} | {_num(tr.get('steps_per_s'))} | {_num(tr.get('images_per_s'))} | "
            f"{_num(peak, '{:.0f} MiB')} | {_num(single.get('v_rand'), '{:.4f}')} | "
            f"{_num(tta.get('v_rand'), '{:.4f}')} | {_num(single.get('v_info'), '{:.4f}')} | "
            f"{_num(tta.get('v_info'), '{:.4f}')} |")
    pred = report.get("prediction") or {}
    shape = (pred.get("image") or {}).get("shape")
    lines += ["", f"Prediction of a {'x'.join(map(str, shape or ['?']))} image (Mpx/s)", "",
              "| model | fp32 | AMP (bf16) | fp32, channels_last off | max abs Δp AMP | "
              "AMP agrees |", "|---|---|---|---|---|---|"]
    for row, res in (pred.get("rows") or {}).items():
        st = res.get("settings") or {}
        amp = res.get("amp_vs_fp32") or {}
        agree = amp.get("agree")
        lines.append(
            f"| {row} | {_num((st.get('fp32') or {}).get('mpx_per_s'))} | "
            f"{_num((st.get('amp_bf16') or {}).get('mpx_per_s'))} | "
            f"{_num((st.get('fp32_contiguous') or {}).get('mpx_per_s'))} | "
            f"{_num(amp.get('max_abs_diff'), '{:.2g}')} | "
            f"{'–' if agree is None else ('yes' if agree else 'no')} |")
    tol = report["settings"]["amp_tolerance"]
    lines += ["", f"AMP agrees: max |Δp| <= {tol['max_abs_diff']:g} and at most "
                  f"{100 * tol['flipped_fraction']:g} % of pixels change side of 0.5"]
    wp = report.get("worker_process") or {}
    if "released" in wp:
        what = {True: "GPU memory released", False: "GPU memory NOT released",
                None: wp.get("note", "")}[wp["released"]]
        held = wp.get("held_by_worker_mib")
        lines.append(f"worker process: ran {wp.get('job')} in {wp.get('seconds', 0):.1f} s; "
                     f"{what}" + (f" (held {held:.0f} MiB while running)" if held else ""))
    else:
        lines.append(f"worker process: {wp.get('skipped') or wp.get('error') or 'not run'}")
    ddp = report.get("ddp") or {}
    if ddp.get("world_size"):
        lines.append(f"DDP: {ddp['status']}, {ddp['world_size']} ranks, {ddp.get('backend')}, "
                     f"same loss on every rank: {ddp.get('same_loss_on_every_rank')}")
    else:
        lines.append(f"DDP: {ddp.get('status', 'not run')}")
    return lines


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--isbi", type=Path, default=None,
                   help="folder with ISBI 2012 train-volume.tif and train-labels.tif "
                        "(255 = cell interior); required except with --dry-run")
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"),
                   help="the JSON report; every phase's log goes beside it (OUT.log)")
    p.add_argument("--minutes", type=float, default=3.0, help="training time of each row")
    p.add_argument("--budget-minutes", type=float, default=8.0,
                   help="hard wall-clock limit of the whole check")
    p.add_argument("--device", default="cuda", help="cuda or cuda:N (--dry-run: cpu)")
    p.add_argument("--sequential", action="store_true",
                   help="train the two rows one after the other instead of side by side "
                        "(each then gets half the training time left)")
    p.add_argument("--predict-size", type=int, default=4096, help="side of the timed image")
    p.add_argument("--tile", type=int, default=512, help="prediction tile (fcres predict's)")
    p.add_argument("--overlap", type=int, default=64, help="prediction tile overlap")
    p.add_argument("--repeats", type=int, default=2, help="timed predictions per setting")
    p.add_argument("--amp-max-diff", type=float, default=0.1,
                   help="AMP agrees with fp32 when max |Δp| is at most this ...")
    p.add_argument("--amp-flip-fraction", type=float, default=0.005,
                   help="... and at most this fraction of pixels changes side of 0.5")
    p.add_argument("--ddp-cpu", type=int, default=0, metavar="N",
                   help="run the DDP step on the CPU with gloo and N ranks (checks the DDP "
                        "phase where there is no second GPU)")
    p.add_argument("--dry-run", action="store_true",
                   help="the same path on the CPU: tiny preset, a few steps on 64² crops")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="keep run folders, specs and logs here (default: a temporary folder, "
                        "removed at the end)")
    args = p.parse_args(argv)
    if args.isbi is None and not args.dry_run:
        p.error("--isbi FOLDER is required (train-volume.tif and train-labels.tif of "
                "ISBI 2012), except with --dry-run")
    if args.minutes <= 0 or args.budget_minutes <= 0:
        p.error("--minutes and --budget-minutes must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the check; exit status 1 when a phase failed or was killed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    args = parse_args(argv)
    if str(HERE) not in sys.path:  # loaded by file path
        sys.path.insert(0, str(HERE))
    # a SIGTERM unwinds like Ctrl-C: the phases are killed and the JSON is written
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
