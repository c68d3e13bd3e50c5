"""Matplotlib in the dock widgets: the canvas, the theme colours and the Train widget's plot.

* :func:`make_canvas` / :func:`style_axes` - a matplotlib figure embedded in Qt, in the
  viewer's theme colours (the Train and Inspect widgets).
* :class:`TrainingPlot` - the live training plot: training loss per step and the validation
  score that keeps the best checkpoint per epoch.

:class:`TrainingPlot` holds the data series of every ensemble member, sets up the two axes and
redraws them cheaply: the lines are blitted onto a saved background, and the axes limits grow
in big jumps so that a full (costly) matplotlib draw on the GUI thread is rare.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy

from ..selection import metric_name

log = logging.getLogger(__name__)

__all__ = ["TrainingPlot", "make_canvas", "style_axes"]


def make_canvas(
    figsize: tuple[float, float] = (4.0, 3.0), nrows: int = 1, ncols: int = 1,
    sharex: bool = False, viewer: Any | None = None,
) -> tuple[Any, Any, list[Any]]:
    """``(canvas, figure, axes)``: a matplotlib figure embedded as a Qt widget.

    With ``viewer`` the figure takes the colours of the viewer's napari theme.
    """
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = list(fig.subplots(nrows, ncols, sharex=sharex, squeeze=False).ravel())
    canvas = FigureCanvasQTAgg(fig)
    canvas.setMinimumHeight(int(figsize[1] * 60))
    canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
    if viewer is not None:
        style_axes(fig, axes, viewer)
    return canvas, fig, axes


def style_axes(fig: Any, axes: Sequence[Any], viewer: Any) -> None:
    """Colour a figure and its axes like the viewer's napari theme (re-run after ``cla()``)."""
    try:
        from napari.utils.theme import get_theme

        theme = get_theme(viewer.theme)
        bg, text = theme.background.as_hex(), theme.text.as_hex()
        grid = theme.secondary.as_hex()
    except Exception:  # noqa: BLE001 - styling is cosmetic
        return
    fig.set_facecolor(bg)
    for ax in axes:
        ax.set_facecolor(bg)
        ax.tick_params(colors=text, which="both")
        for spine in ax.spines.values():
            spine.set_color(grid)
        ax.xaxis.label.set_color(text)
        ax.yaxis.label.set_color(text)
        ax.title.set_color(text)

#: ``{member: (x values, y values)}``
Series = dict[int, tuple[list[int], list[float]]]

#: How each training loss is shown: ``1 + loss``.  The Dice loss of eq. (2) is -Dice (from -1
#: to 0), so the plot and the status show 1 - Dice (from 1 to 0, 0 is perfect) and
#: BCE + 1 - Dice for "bce_dice": a positive quantity that falls, named as what it is.
LOSS_LABELS = {"dice": "1 − Dice", "bce_dice": "BCE + 1 − Dice"}


def shown_loss(loss: float) -> float:
    """The training loss as the Train widget shows it (see :data:`LOSS_LABELS`)."""
    return float(loss) + 1.0


def loss_label(loss: str) -> str:
    """What the shown loss is, e.g. "1 − Dice" for the Dice loss."""
    return LOSS_LABELS.get(loss, f"1 + {loss} loss")


def _score_title(metric: str | None) -> str:
    if metric is None:
        return "validation score (keeps the best checkpoint)"
    return f"validation {metric_name(metric)} (keeps the best checkpoint)"


class TrainingPlot:
    """Loss per step (top axes) and the validation score per epoch (bottom axes), per member.

    The loss is shown as :func:`shown_loss` (1 - Dice for the Dice loss); the score is the one
    that keeps the best checkpoint (Dice or V_rand, :meth:`set_metric`).  ``canvas`` is the Qt
    widget to lay out; :meth:`add_step` / :meth:`add_validation` record reports,
    :meth:`redraw` shows what was recorded since the last call, :meth:`setup_axes` empties the
    axes for a new run and :meth:`reset` forgets the data.
    """

    def __init__(self, viewer: Any | None = None, figsize: tuple[float, float] = (4.0, 3.6)
                 ) -> None:
        self.viewer = viewer
        self.canvas, self.figure, axes = make_canvas(figsize, nrows=2, viewer=viewer)
        self.ax_loss, self.ax_score = axes
        self.canvas.mpl_connect("draw_event", self._on_canvas_draw)
        self.canvas.mpl_connect("resize_event", self._relayout)
        self.canvas.setToolTip(
            "Training loss per step (top; the Dice loss shown as 1 − Dice: lower is better) "
            "and, per epoch, the validation score that keeps the best checkpoint (bottom; "
            "Dice or V_rand: higher is better)"
        )
        self.metric: str | None = None
        self.reset()
        self.setup_axes()

    # ------------------------------------------------------------------ data
    def reset(self) -> None:
        """Forget every series (the axes keep their lines until :meth:`setup_axes`)."""
        self._loss: Series = {}
        self._score: Series = {}
        self._dirty = False

    def data(self) -> dict[str, Series]:
        """The plotted series: ``{"loss": {member: (steps, shown losses)}, "score": {member:
        (epochs, validation scores)}}``."""
        return {"loss": self._loss, "score": self._score}

    def add_step(self, member: int, step: int, loss: float) -> None:
        """Record the training loss (as reported; shown as :func:`shown_loss`) of ``member``."""
        xs, ys = self._loss.setdefault(member, ([], []))
        xs.append(step)
        ys.append(shown_loss(loss))
        self._dirty = True

    def add_validation(self, member: int, epoch: int, score: float) -> None:
        """Record the validation score (by :attr:`metric`) of ``member`` after ``epoch``."""
        xs, ys = self._score.setdefault(member, ([], []))
        xs.append(epoch)
        ys.append(score)
        self._dirty = True

    def set_metric(self, metric: str | None) -> None:
        """Name the score that keeps the best checkpoint ("dice" or "v_rand") in the title."""
        if metric == self.metric:
            return
        self.metric = metric
        self.ax_score.set_title(_score_title(metric), fontsize=9)
        self._background = None  # the title changed: the next redraw is a full one
        self._dirty = True

    # ------------------------------------------------------------------ axes
    def setup_axes(self, loss: str = "dice", metric: str | None = None) -> None:
        """Empty axes for a run with ``loss`` ("dice" or "bce_dice") whose checkpoint is kept
        by ``metric`` (None: not known yet).  The Dice loss (shown as 1 - Dice) gets its whole
        range [0, 1] up front."""
        from matplotlib.ticker import MaxNLocator

        dice_loss = loss == "dice"
        self.metric = metric
        self.ax_loss.cla()
        self.ax_score.cla()
        self.ax_loss.set_title(f"training loss ({loss_label(loss)})", fontsize=9)
        self.ax_loss.set_xlabel("step", fontsize=8)
        self.ax_score.set_title(_score_title(metric), fontsize=9)
        self.ax_score.set_xlabel("epoch", fontsize=8)
        for ax in (self.ax_loss, self.ax_score):
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        self.ax_loss.set_xlim(0, 10)
        self.ax_loss.set_ylim(*((-0.02, 1.02) if dice_loss else (0.0, 1.0)))
        self.ax_score.set_xlim(0, 5)
        self.ax_score.set_ylim(0, 1.02)
        if self.viewer is not None:
            style_axes(self.figure, [self.ax_loss, self.ax_score], self.viewer)
        self._loss_lines: dict[int, Any] = {}
        self._score_lines: dict[int, Any] = {}
        self._add_lines(0)  # the first member's lines exist up front: no full redraw for them
        self._loss_range: tuple[float, float] | None = (0.0, 1.0) if dice_loss else None
        self._background: Any = None
        self.figure.set_layout_engine("constrained")

    def draw(self) -> None:
        """A full draw of the canvas now."""
        self.canvas.draw()

    def _on_canvas_draw(self, event: Any = None) -> None:
        """After a full draw: keep the empty axes for blitting, then draw the lines."""
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        for line in self._all_lines():
            self.figure.draw_artist(line)
        if self.figure.get_layout_engine() is not None:
            # constrained layout doubles the cost of every draw: lay out once, then freeze
            QTimer.singleShot(0, self._freeze_layout)

    def _freeze_layout(self) -> None:
        try:
            self.figure.set_layout_engine("none")
        except RuntimeError:  # the widget is gone
            pass

    def _relayout(self, event: Any = None) -> None:
        """The canvas changed size: lay the axes out again at the next draw."""
        self.figure.set_layout_engine("constrained")

    def _all_lines(self) -> list[Any]:
        return [*self._loss_lines.values(), *self._score_lines.values()]

    def _fit_limits(self) -> None:
        """Axes that just hold the data (at the end of a run)."""
        steps = max((xs[-1] for xs, _ in self._loss.values() if xs), default=0)
        epochs = max((xs[-1] for xs, _ in self._score.values() if xs), default=0)
        self.ax_loss.set_xlim(0, max(steps, 1) * 1.03)
        self.ax_score.set_xlim(0, max(epochs, 1) + 0.5)
        values = [y for _, ys in self._loss.values() for y in ys]
        if values:
            lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
            pad = max(hi - lo, 1e-3) * 0.08
            self.ax_loss.set_ylim(lo - pad, hi + pad)
            self._loss_range = (lo, hi)

    def _grow_limits(self, steps_per_epoch: int = 0) -> bool:
        """Widen the axes when the data leaves them; True when they changed (full redraw).

        Limits grow in big jumps so that nearly every update only blits the lines: a full
        matplotlib draw costs tens of milliseconds on the GUI thread.
        """
        changed = False
        steps = max((xs[-1] for xs, _ in self._loss.values() if xs), default=0)
        if steps > self.ax_loss.get_xlim()[1]:
            self.ax_loss.set_xlim(0, max(10, int(2.5 * steps), 5 * steps_per_epoch))
            changed = True
        epochs = max((xs[-1] for xs, _ in self._score.values() if xs), default=0)
        if epochs > self.ax_score.get_xlim()[1]:
            self.ax_score.set_xlim(0, max(5, int(2.5 * epochs)))
            changed = True
        values = [y for _, ys in self._loss.values() for y in ys[-2000:]]
        if values:
            lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
            cur_lo, cur_hi = self.ax_loss.get_ylim()
            if self._loss_range is None or lo < cur_lo or hi > cur_hi:
                # losses fall: leave room below
                span = max(hi - lo, 1e-3)
                self.ax_loss.set_ylim(min(lo - span, cur_lo) if self._loss_range else lo - span,
                                      max(hi + 0.3 * span, cur_hi) if self._loss_range
                                      else hi + 0.3 * span)
                self._relayout()  # new y tick labels may need another margin
                changed = True
            self._loss_range = (lo, hi)
        return changed

    def _add_lines(self, member: int) -> None:
        color = f"C{member % 10}"
        (self._loss_lines[member],) = self.ax_loss.plot(
            [], [], lw=0.8, color=color, label=f"member {member + 1}", animated=True
        )
        (self._score_lines[member],) = self.ax_score.plot(
            [], [], "o-", ms=3, lw=1, color=color, animated=True
        )

    # ------------------------------------------------------------------ redraw
    def redraw(self, force: bool = False, *, running: bool = False,
               steps_per_epoch: int = 0) -> None:
        """Show the data recorded since the last redraw (``force``: redraw anyway).

        A forced redraw of a finished run (``running`` False) fits the axes to the data;
        ``steps_per_epoch`` lets the step axis grow by whole epochs.
        """
        if not (self._dirty or force):
            return
        self._dirty = False
        new_line = False
        for member in sorted({*self._loss, *self._score}):
            if member not in self._loss_lines:
                self._add_lines(member)
                new_line = True
            if member in self._loss:
                self._loss_lines[member].set_data(*self._loss[member])
            if member in self._score:
                self._score_lines[member].set_data(*self._score[member])
        if new_line and len(self._loss_lines) > 1:
            self.ax_loss.legend(fontsize=7)
        if force and not running:
            self._fit_limits()
            self._relayout()
        full = (self._grow_limits(steps_per_epoch) or new_line or force
                or self._background is None)
        if full or not self.canvas.isVisible():
            self.canvas.draw()  # calls _on_canvas_draw
            return
        self.canvas.restore_region(self._background)
        for line in self._all_lines():
            self.figure.draw_artist(line)
        self.canvas.blit(self.figure.bbox)
