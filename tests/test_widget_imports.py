"""Widget modules never import each other; they share only private ``_`` modules (issue 11)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

WIDGETS = Path(__file__).resolve().parents[1] / "napari_fcres" / "widgets"
PACKAGE = "napari_fcres.widgets"


def widget_modules() -> set[str]:
    """The public widget modules (``train``, ``predict``, ...), not the private helpers."""
    return {p.stem for p in WIDGETS.glob("*.py") if not p.stem.startswith("_")}


def imported_modules(source: str) -> Iterator[tuple[int, str]]:
    """``(line, module)`` of every import in ``source`` (a module of the widgets package)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = PACKAGE.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def widget_imported(module: str, own: str) -> str | None:
    """The widget module ``module`` names (other than ``own``), or None."""
    for name in widget_modules() - {own}:
        target = f"{PACKAGE}.{name}"
        if module == target or module.startswith(target + "."):
            return name
    return None


def test_the_check_sees_relative_absolute_and_nested_imports():
    source = (
        "from .predict import layer_names\n"
        "from . import train\n"
        "def f():\n"
        "    import napari_fcres.widgets.correct\n"
        "from ._layers import RESULT_KEY\n"
        "from ..postprocess import merge_labels\n"
    )
    found = sorted({w for _, m in imported_modules(source)
                    if (w := widget_imported(m, "export")) is not None})
    assert found == ["correct", "predict", "train"]


def test_no_widget_module_imports_another():
    assert {"train", "predict", "correct", "export", "export_model", "inspect"} <= \
        widget_modules()
    bad = sorted(
        f"widgets/{path.name}:{line} imports {module}"
        for path in WIDGETS.glob("*.py")
        for line, module in imported_modules(path.read_text(encoding="utf-8"))
        if widget_imported(module, path.stem) is not None
    )
    assert not bad, (
        "widget modules must not import each other; share code through a private module "
        "(napari_fcres/widgets/_layers.py, _pickers.py, ...):\n" + "\n".join(bad)
    )
