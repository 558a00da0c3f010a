"""Packaging: the package lists are computed, so every subpackage (a new family under ``losscore/``,
a new router under ``app/routers/``) and every data file (``losscore/lesson_data/*.json``, the
page) ships without editing this file.

The web layer lives in the repository folder ``app/`` but installs as ``losslab_web`` (an
installed top-level ``app`` would collide with any other project's ``app``); the page
(``templates/``, ``static/``) installs inside it as ``losslab_web/templates`` and
``losslab_web/static``. Everything else is in ``pyproject.toml``.
"""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
WEB = "losslab_web"
PAGE = {f"{WEB}.templates": "templates", f"{WEB}.static": "static"}  # data folders, installed inside WEB


def _data(package: str, folder: str) -> dict[str, list[str]]:
    """Every file under ``folder`` that is not Python source, as package data of ``package``: a
    folder that is not a Python package ships as a data package of its own (a folder whose name is
    not an identifier ships with its parent, its files named relative to the parent)."""
    base = ROOT / folder
    out: dict[str, list[str]] = {}
    for path in sorted(base.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".py", ".pyc"):
            continue
        parts = path.relative_to(base).parts[:-1]
        depth = next((i for i, part in enumerate(parts) if not part.isidentifier()), len(parts))
        name = ".".join((package, *parts[:depth]))
        out.setdefault(name, []).append(str(Path(*path.relative_to(base).parts[depth:])))
    return out


CODE = find_packages(include=["losscore", "losscore.*"]) + [WEB] + [f"{WEB}.{name}" for name in find_packages("app")]
DATA = {**_data("losscore", "losscore"), **_data(WEB, "app"),
        **{name: files for package, folder in PAGE.items() for name, files in _data(package, folder).items()}}

setup(
    packages=CODE + [name for name in DATA if name not in CODE],
    package_dir={WEB: "app", **PAGE},
    package_data=DATA,
)
