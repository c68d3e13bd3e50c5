"""Which checkpoint a few-slice run should keep: the best validation one or the final weights.

For finished ISBI runs of ``few_labels.py`` (a folder holding ``member_00/best.pt`` and
``last.pt``), predicts slices 12-29 with three sets of weights: ``best.pt`` (what the run
kept), ``last.pt``'s moving average of the weights (when the run kept one) and its raw
weights; prints V_rand on the selection slices 12-19 and the test slices 20-29 of each
(BENCHMARKS.md section 1c, "Which checkpoint to keep").

    python benchmarks/checkpoint_choice.py runs/few/b10_k3_even/ours runs/few/b10_k3_even/unet
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by file path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ISBI_FOREGROUND, load_isbi, set_torch_threads  # noqa: E402

log = logging.getLogger("checkpoint_choice")

#: (name, first slice, end slice) of the ISBI training volume scored
RANGES = (("select", 12, 20), ("test", 20, 30))


def score_weights(run: Path, image: Any, labels: Any) -> dict[str, dict[str, float]]:
    """V_rand of ``best.pt``, the final average and the final raw weights of one run."""
    from napari_fcres.checkpoint import model_from_checkpoint, read_checkpoint
    from napari_fcres.inference import predict
    from napari_fcres.metrics import isbi_scores

    best = read_checkpoint(run / "member_00" / "best.pt")
    last = read_checkpoint(run / "member_00" / "last.pt")
    candidates = {"best.pt": best, "final raw": last}
    if "weight_average" in last:
        candidates["final average"] = {**last,
                                       "model_state": last["weight_average"]["model_state"]}
    lo, hi = RANGES[0][1], RANGES[-1][2]
    out: dict[str, dict[str, float]] = {}
    for name, ck in candidates.items():
        model = model_from_checkpoint(ck).eval()
        probs = predict([model], image[lo:hi], device="cpu").probabilities
        out[name] = {
            part: float(isbi_scores(probs[a - lo:b - lo], labels[a:b],
                                    foreground_value=ISBI_FOREGROUND)["v_rand"])
            for part, a, b in RANGES
        }
        log.info("%s %s: select %.4f, test %.4f", run, name, out[name]["select"],
                 out[name]["test"])
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (member_00/best.pt, last.pt)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    set_torch_threads(args.threads)
    image, labels = load_isbi()
    report = {str(run): score_weights(run, image, labels) for run in args.runs}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
