"""The ``fcres train`` progress bar, in the terms a user thinks in.

One line: how far the whole run is, then member, epoch and step, the last loss, the
best validation score so far and the time left against ``--max-minutes`` or the
epoch limit (whichever ends the run first).  ASCII only, so any console can show it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .training import TrainProgress

#: Display names of the validation scores that can keep the best checkpoint.
SCORE_NAMES = {"dice": "Dice", "v_rand": "V_rand"}


def score_name(p: TrainProgress) -> str:
    """Name of the score in ``p.best_val_dice`` (``p.metric`` where the loop reports one)."""
    metric = getattr(p, "metric", None) or "dice"
    return SCORE_NAMES.get(metric, metric)


def format_duration(seconds: float) -> str:
    """``4:05`` or ``1:02:03``."""
    s = max(0, int(round(seconds)))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def time_left(p: TrainProgress, max_minutes: float | None) -> tuple[float, str] | None:
    """Seconds left in the whole run and what ends it ("time limit" or "epoch limit").

    The epoch limit is extrapolated from this member's seconds per step so far
    (validation included); ``--max-minutes`` is shared equally by the members, as in
    training.  Early stopping can end a run sooner than either.
    """
    after = max(0, p.n_members - p.member - 1)  # members still to train after this one
    options: list[tuple[float, str]] = []
    total_steps = p.epochs * p.steps_per_epoch  # 0: no epoch limit (the time budget ends it)
    if total_steps and p.step > 0 and p.elapsed > 0:
        rate = p.elapsed / p.step
        options.append((rate * (max(0, total_steps - p.step) + after * total_steps),
                        "epoch limit"))
    if max_minutes:
        share = max_minutes * 60.0 / max(1, p.n_members)
        options.append((max(0.0, share - p.elapsed) + after * share, "time limit"))
    return min(options) if options else None


def describe(p: TrainProgress, max_minutes: float | None = None) -> str:
    """``member 1/2, epoch 3/50 step 2/5, loss 0.41, best val Dice 0.73 (epoch 2), ...``."""
    if p.kind == "done":
        return p.message or "done"
    parts: list[str] = []
    if p.n_members > 1:
        parts.append(f"member {p.member + 1}/{p.n_members}")
    of = f"/{p.epochs}" if p.epochs else ""
    if p.kind == "validation":
        parts.append(f"step {p.step} validated")
    else:
        parts.append(f"epoch {min(p.epoch + 1, p.epochs) if p.epochs else p.epoch + 1}{of} "
                     f"step {p.step}")
    if p.loss is not None:
        parts.append(f"loss {p.loss:.4f}")
    if p.best_val_dice is not None:
        best = f"best val {score_name(p)} {p.best_val_dice:.4f}"
        parts.append(best + (f" (step {p.best_step})" if p.best_step else ""))
    parts.append(f"{format_duration(p.elapsed)} elapsed")
    left = time_left(p, max_minutes)
    if left is not None and p.kind not in ("member_done", "done"):
        parts.append(f"~{format_duration(left[0])} left ({left[1]})")
    return ", ".join(parts)


class TrainBar:
    """A tqdm bar over the whole run (all members) with :func:`describe` beside it.

    Nothing is drawn before the first :meth:`update`, so an input error never leaves an
    empty bar behind.  Use it as a context manager: log lines then print above the bar
    instead of through it.
    """

    def __init__(self, max_minutes: float | None, *, disable: bool = False, **tqdm_kw: Any):
        self.max_minutes = max_minutes
        self.disable = disable
        self.tqdm_kw = tqdm_kw
        self.bar: Any = None
        self._redirect: Any = None

    def __enter__(self) -> TrainBar:
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._redirect = logging_redirect_tqdm()
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
        if self._redirect is not None:
            self._redirect.__exit__(*exc)
            self._redirect = None

    def update(self, p: TrainProgress) -> None:
        text, n = describe(p, self.max_minutes), int(round(p.fraction * 1000))
        if self.bar is None:
            from tqdm import tqdm

            # the text goes in {desc}: tqdm would put ", " before a {postfix}; lines longer
            # than the terminal are cut at its width, so the bar has a fixed width
            self.bar = tqdm(total=1000, initial=n, desc=text, disable=self.disable,
                            dynamic_ncols=True,
                            bar_format="train {percentage:3.0f}%|{bar:16}| {desc}",
                            **self.tqdm_kw)
            return
        self.bar.n = n
        self.bar.set_description_str(text, refresh=False)
        if p.kind == "step":
            self.bar.update(0)  # redraws at most every tqdm mininterval
        else:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
