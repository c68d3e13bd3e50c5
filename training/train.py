"""Run one of the training set-ups in this folder headlessly.

    python training/train.py training/cpu_demo.yaml [--out DIR] [extra `fcres train` options]

The YAML's ``run:`` section names the image, labels, optional slices and output
folder (``isbi2012:...`` and ``sample:...`` shorthands work); the rest is the
napari-fcres config.  This is the same training loop as ``fcres train`` and the
napari Train widget.  An output folder that already holds a run is refused; pass
``--resume`` to continue it or ``--overwrite`` to move it aside and start over.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from napari_fcres.cli import main as fcres_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a YAML set-up, e.g. training/isbi_em.yaml")
    parser.add_argument("--out", help="override run.out")
    args, extra = parser.parse_known_args(argv)
    raw = yaml.safe_load(Path(args.config).read_text()) or {}  # plain values only
    if not isinstance(raw, dict):
        parser.error(f"{args.config} must hold a mapping")
    run = raw.get("run") or {}
    if "image" not in run or "labels" not in run:
        parser.error(f"{args.config} has no run.image / run.labels")
    cmd = ["train", str(run["image"]), str(run["labels"]), "--config", args.config,
           "--out", args.out or str(run.get("out", "runs/" + Path(args.config).stem))]
    if run.get("slices") is not None:
        cmd += ["--slices", str(run["slices"])]
    return fcres_main(cmd + extra)


if __name__ == "__main__":
    sys.exit(main())
