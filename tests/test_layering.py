"""Layering: the core of napari_fcres imports no GUI toolkit and no widget.

Only ``napari_fcres/widgets/`` and the npe2 entry modules that ``napari_fcres/napari.yaml``
names (reader, writer, sample data) may import qtpy, napari, magicgui, superqt or a Qt binding.
The same rule is ruff's ``TID251`` (``pyproject.toml``); this test holds it where ruff is not
run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import yaml

PACKAGE = Path(__file__).resolve().parents[1] / "napari_fcres"
#: top-level modules only the GUI layer may import
GUI_MODULES = ("qtpy", "napari", "magicgui", "superqt", "PyQt5", "PyQt6", "PySide2", "PySide6")
#: the GUI layer of the package itself
GUI_PACKAGE = "napari_fcres.widgets"


def entry_modules() -> set[str]:
    """Modules napari loads through napari.yaml that are not widgets (e.g. ``_reader``)."""
    manifest = yaml.safe_load((PACKAGE / "napari.yaml").read_text(encoding="utf-8"))
    names = {c["python_name"].split(":")[0] for c in manifest["contributions"]["commands"]}
    return {n for n in names if not n.startswith(GUI_PACKAGE + ".")}


def module_name(path: Path) -> str:
    """``napari_fcres/models/unet.py`` -> ``napari_fcres.models.unet``."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_files() -> list[Path]:
    """``napari_fcres/*.py`` and ``napari_fcres/models/*.py`` except the npe2 entry modules."""
    entries = entry_modules()
    files = sorted(PACKAGE.glob("*.py")) + sorted((PACKAGE / "models").glob("*.py"))
    return [f for f in files if module_name(f) not in entries]


def imports_of(source: str, package: str) -> Iterator[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``source``, nested ones too.

    ``package`` is the package the code lives in (relative imports resolve against it);
    ``from a import b`` yields ``a`` and ``a.b`` (``b`` may be a submodule).
    """
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - (node.level - 1)]
                module = ".".join(base + ([module] if module else []))
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def file_imports(path: Path) -> Iterator[tuple[int, str]]:
    """:func:`imports_of` a file of the package."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_of(path.read_text(encoding="utf-8"), package)


def is_gui(module: str) -> bool:
    """Whether ``module`` belongs to a GUI toolkit or to napari_fcres.widgets."""
    return (module.split(".")[0] in GUI_MODULES or module == GUI_PACKAGE
            or module.startswith(GUI_PACKAGE + "."))


def test_entry_modules_are_the_npe2_ones():
    assert entry_modules() == {
        "napari_fcres._reader", "napari_fcres._writer", "napari_fcres._sample_data"}


def test_core_modules_import_no_gui():
    files = core_files()
    assert PACKAGE / "training.py" in files and PACKAGE / "models" / "unet.py" in files
    bad = sorted({
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
        for path in files
        for line, module in file_imports(path)
        if is_gui(module)
    })
    assert not bad, (
        "core modules must not import a GUI toolkit or napari_fcres.widgets (move the code "
        "to napari_fcres/widgets/):\n" + "\n".join(bad)
    )


def test_the_check_sees_nested_dotted_and_relative_imports():
    source = (
        "import numpy\n"
        "def f():\n"
        "    from qtpy.QtCore import Qt\n"
        "    import napari.layers\n"
        "from .widgets import train\n"
        "from . import widgets\n"
        "from ..io import read_image\n"
    )
    found = sorted(m for _, m in imports_of(source, "napari_fcres") if is_gui(m))
    assert found == ["napari.layers", "napari_fcres.widgets", "napari_fcres.widgets",
                     "napari_fcres.widgets.train", "qtpy.QtCore", "qtpy.QtCore.Qt"]
    in_models = [m for _, m in imports_of("from ..widgets import train\n", "napari_fcres.models")]
    assert in_models == ["napari_fcres.widgets", "napari_fcres.widgets.train"]
    assert not any(is_gui(m) for m in ("napari_fcres.io", "napari_fcres", "numpy", "napari_x"))


def test_checkpoint_files_know_nothing_of_run_folders():
    """checkpoint.py reads and writes single files; runs.py (which uses it) resolves folders.

    No import of runs.py there, nested ones included, so the two never import each other.
    """
    path = PACKAGE / "checkpoint.py"
    found = [(line, m) for line, m in file_imports(path)
             if m == "napari_fcres.runs" or m.startswith("napari_fcres.runs.")]
    assert not found, found
