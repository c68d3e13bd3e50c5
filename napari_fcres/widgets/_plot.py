"""Matplotlib in the dock widgets: the canvas, the theme colours and the Train widget's plot.

* :func:`make_canvas` / :func:`style_axes` - a matplotlib figure embedded in Qt, in the
  viewer's theme colours (the Train and Inspect widgets).
* :class:`LazyCanvas` / :func:`warm_matplotlib` - where a figure goes before matplotlib is
  imported: the import (and, in a fresh home folder, building matplotlib's font cache: seconds)
  runs in a background thread, never on the GUI thread while a dock opens.
* :class:`TrainingPlot` - the live training plot: training loss per step and the validation
  score that keeps the best checkpoint at each validation step.

:class:`TrainingPlot` holds the data series of every ensemble member, sets up the two axes and
redraws them cheaply: the lines are blitted onto a saved background, and the axes limits grow
in big jumps so that a full (costly) matplotlib draw on the GUI thread is rare.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

from ..config import metric_name

log = logging.getLogger(__name__)

__all__ = ["TrainingPlot", "LazyCanvas", "make_canvas", "style_axes", "warm_matplotlib",
           "matplotlib_ready"]

#: What the GUI thread needs of matplotlib, imported in the background first.
MATPLOTLIB_MODULES = ("matplotlib.figure", "matplotlib.ticker", "matplotlib.backends.backend_agg",
                      "matplotlib.backends.backend_qtagg")
#: How often (ms) a :class:`LazyCanvas` looks whether matplotlib is there.
POLL_MS = 50

_warm: threading.Thread | None = None
_warm_lock = threading.Lock()


def _import_matplotlib() -> None:
    """Import matplotlib and draw a small figure once: the first draw finds the fonts (scores
    every installed font; cached for all threads), which the GUI thread need not do then."""
    for name in MATPLOTLIB_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the GUI thread's import will say it again
            log.warning("could not import %s in the background: %s", name, exc)
            return
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(2.0, 1.5))
        ax = fig.subplots()
        ax.set_title("warm-up", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        FigureCanvasAgg(fig).draw()  # nothing else touches this figure
    except Exception as exc:  # noqa: BLE001 - only an optimisation
        log.debug("matplotlib warm-up draw failed: %s", exc)


def warm_matplotlib() -> None:
    """Import matplotlib in a background thread (once): the GUI thread keeps running."""
    global _warm
    with _warm_lock:
        if _warm is None:
            _warm = threading.Thread(target=_import_matplotlib, name="fcres-matplotlib",
                                     daemon=True)
            _warm.start()


def matplotlib_ready() -> bool:
    """Whether the background import of matplotlib has finished."""
    return _warm is not None and not _warm.is_alive()


def wait_for_matplotlib() -> None:
    """Block until matplotlib is imported (started now if it was not)."""
    warm_matplotlib()
    assert _warm is not None
    _warm.join()


#: Margins of the axes in pixels: left, right, top, bottom and the gap between rows (room for
#: the tick labels, titles and axis labels at the font sizes the widgets use).
MARGINS_PX = (44, 12, 22, 36, 58)


def fit_margins(fig: Any, nrows: int, margins: tuple[int, int, int, int, int] = MARGINS_PX
                ) -> None:
    """Place the axes by fixed pixel margins for the figure's present size.

    Cheap (no text is measured): matplotlib's constrained layout measured every tick label
    and cost a third of a second of the GUI thread per draw.
    """
    width, height = fig.bbox.width, fig.bbox.height
    left, right, top, bottom, gap = margins
    if width <= left + right + 10 or height <= top + bottom + gap * (nrows - 1) + 10:
        return
    axes_height = (height - top - bottom - gap * (nrows - 1)) / nrows
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height,
                        bottom=bottom / height, hspace=gap / axes_height if nrows > 1 else 0)


def make_canvas(
    figsize: tuple[float, float] = (4.0, 3.0), nrows: int = 1, ncols: int = 1,
    sharex: bool = False, viewer: Any | None = None,
    margins: tuple[int, int, int, int, int] = MARGINS_PX,
) -> tuple[Any, Any, list[Any]]:
    """``(canvas, figure, axes)``: a matplotlib figure embedded as a Qt widget.

    With ``viewer`` the figure takes the colours of the viewer's napari theme.  The axes keep
    ``margins`` (pixels, see :func:`fit_margins`) whatever the canvas size.
    """
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    axes = list(fig.subplots(nrows, ncols, sharex=sharex, squeeze=False).ravel())
    canvas = FigureCanvasQTAgg(fig)
    canvas.setMinimumHeight(int(figsize[1] * 60))
    canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
    fit_margins(fig, nrows, margins)
    canvas.mpl_connect("resize_event", lambda event: fit_margins(fig, nrows, margins))
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

class LazyCanvas(QWidget):
    """A box for a matplotlib figure that makes the figure once matplotlib is imported.

    Until then the box is empty (as tall as the figure will be) and matplotlib is imported in a
    background thread (:func:`warm_matplotlib`); then ``canvas``, ``figure`` and ``axes`` exist
    (:func:`make_canvas`) and ``ready`` is emitted.  :meth:`ensure` makes them now (waiting for
    the import if it still runs), for code that needs the figure at once.
    """

    ready = Signal()

    def __init__(self, figsize: tuple[float, float] = (4.0, 3.0), nrows: int = 1,
                 viewer: Any | None = None, tooltip: str = "",
                 margins: tuple[int, int, int, int, int] = MARGINS_PX,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._args = (figsize, nrows, viewer, margins)
        self._tooltip = tooltip
        self.canvas: Any = None
        self.figure: Any = None
        self.axes: list[Any] = []
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self.setMinimumHeight(int(figsize[1] * 60))
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.setToolTip(tooltip)
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)
        if matplotlib_ready():
            self._make()
        else:
            warm_matplotlib()
            self._timer.start()

    @property
    def is_ready(self) -> bool:
        """Whether the figure exists."""
        return self.canvas is not None

    def _poll(self) -> None:
        if matplotlib_ready():
            self._timer.stop()
            self._make()

    def ensure(self) -> None:
        """Make the figure now (waits for the background import if it still runs)."""
        if self.canvas is None:
            wait_for_matplotlib()
            self._timer.stop()
            self._make()

    def _make(self) -> None:
        if self.canvas is not None:
            return
        figsize, nrows, viewer, margins = self._args
        self.canvas, self.figure, self.axes = make_canvas(figsize, nrows=nrows, viewer=viewer,
                                                          margins=margins)
        self.canvas.setToolTip(self._tooltip)
        self._layout.addWidget(self.canvas)
        self.ready.emit()


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
    """Loss per step (top axes) and the validation score at each validation step (bottom
    axes), per member.

    The loss is shown as :func:`shown_loss` (1 - Dice for the Dice loss, BCE + 1 - Dice for
    BCE + Dice); the score is the one
    that keeps the best checkpoint (Dice or V_rand, :meth:`set_metric`).  ``widget`` is the Qt
    widget to lay out (a :class:`LazyCanvas`: the figure comes once matplotlib is imported;
    ``canvas``, ``figure``, ``ax_loss`` and ``ax_score`` make it at once); :meth:`add_step` /
    :meth:`add_validation` record reports, :meth:`redraw` shows what was recorded since the
    last call, :meth:`setup_axes` empties the axes for a new run and :meth:`reset` forgets the
    data.  Reports recorded before the figure exists are drawn when it comes.
    """

    def __init__(self, viewer: Any | None = None, figsize: tuple[float, float] = (4.0, 3.6)
                 ) -> None:
        self.viewer = viewer
        self.metric: str | None = None
        self._axes_args: tuple[str, str | None] = ("dice", None)
        self.reset()
        self.widget = LazyCanvas(
            figsize, nrows=2, viewer=viewer,
            tooltip="Training loss per step (top; the Dice loss shown as 1 − Dice: lower is "
            "better) and, at each validation step, the validation score that keeps the best "
            "checkpoint (bottom; Dice or V_rand: higher is better)",
        )
        self.widget.ready.connect(self._on_ready)
        if self.widget.is_ready:
            self._on_ready()

    def _on_ready(self) -> None:
        """The figure exists: connect it, set its axes up and draw what was recorded."""
        canvas = self.widget.canvas
        canvas.mpl_connect("draw_event", self._on_canvas_draw)
        self.setup_axes(*self._axes_args)
        if self._loss or self._score:
            self.redraw(force=True, running=True)

    @property
    def canvas(self) -> Any:
        """The figure's Qt canvas (made now if matplotlib was not imported yet)."""
        self.widget.ensure()
        return self.widget.canvas

    @property
    def figure(self) -> Any:
        self.widget.ensure()
        return self.widget.figure

    @property
    def ax_loss(self) -> Any:
        """Axes of the training loss per step."""
        self.widget.ensure()
        return self.widget.axes[0]

    @property
    def ax_score(self) -> Any:
        """Axes of the validation score per validation step."""
        self.widget.ensure()
        return self.widget.axes[1]

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

    def add_validation(self, member: int, step: int, score: float) -> None:
        """Record the validation score (by :attr:`metric`) of ``member`` at ``step`` (the loss
        axis's unit: validation runs every ``val_every_steps`` steps)."""
        xs, ys = self._score.setdefault(member, ([], []))
        xs.append(step)
        ys.append(score)
        self._dirty = True

    def set_metric(self, metric: str | None) -> None:
        """Name the score that keeps the best checkpoint ("dice" or "v_rand") in the title."""
        if metric == self.metric:
            return
        self.metric = metric
        self._axes_args = (self._axes_args[0], metric)
        if not self.widget.is_ready:
            return
        self.ax_score.set_title(_score_title(metric), fontsize=9)
        self._background = None  # the title changed: the next redraw is a full one
        self._dirty = True

    # ------------------------------------------------------------------ axes
    def setup_axes(self, loss: str = "dice", metric: str | None = None) -> None:
        """Empty axes for a run with ``loss`` ("dice" or "bce_dice") whose checkpoint is kept
        by ``metric`` (None: not known yet).  The Dice loss (shown as 1 - Dice) gets its whole
        range [0, 1] up front.  Before the figure exists this is remembered for it."""
        self._axes_args = (loss, metric)
        self.metric = metric
        if not self.widget.is_ready:
            return
        from matplotlib.ticker import MaxNLocator

        dice_loss = loss == "dice"
        self.ax_loss.cla()
        self.ax_score.cla()
        self.ax_loss.set_title(f"training loss ({loss_label(loss)})", fontsize=9)
        self.ax_loss.set_xlabel("step", fontsize=8)
        self.ax_score.set_title(_score_title(metric), fontsize=9)
        self.ax_score.set_xlabel("step", fontsize=8)
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

    def draw(self) -> None:
        """A full draw of the canvas at the next paint (nothing before the figure exists):
        the handler that asks for it (e.g. Start) returns first."""
        if self.widget.is_ready:
            self._background = None
            self.widget.canvas.draw_idle()

    def _on_canvas_draw(self, event: Any = None) -> None:
        """After a full draw: keep the empty axes for blitting, then draw the lines."""
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        for line in self._all_lines():
            self.figure.draw_artist(line)

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
        if not (self._dirty or force) or not self.widget.is_ready:
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
        full = (self._grow_limits(steps_per_epoch) or new_line or force
                or self._background is None)
        if full or not self.canvas.isVisible():
            self.canvas.draw()  # calls _on_canvas_draw
            return
        self.canvas.restore_region(self._background)
        for line in self._all_lines():
            self.figure.draw_artist(line)
        self.canvas.blit(self.figure.bbox)
