"""The package is typed: ``py.typed`` ships, so type checkers of code that uses geolocus read
its annotations (mypy itself runs on src/ in ``make lint`` and ``make test``)."""

from __future__ import annotations

import tomllib
from importlib.resources import files
from pathlib import Path


def test_py_typed_is_in_the_package_and_its_data() -> None:
    assert files("geolocus").joinpath("py.typed").is_file()
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    data = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["geolocus"]
