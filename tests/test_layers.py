"""The package's layers: a module imports only from its own layer or the ones below.

Every import of a ``geolocus`` module, at module level or inside a function (and
under ``TYPE_CHECKING``), is read from the source with :mod:`ast`, so a lower
layer cannot reach an upper one even lazily.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "geolocus"

#: Bottom to top. A module may import from its own layer and from any layer below it.
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(layer.split())
    for layer in (
        "errors",
        "files weights nn registry modelfile downloads",
        "geo",
        "data",
        "eval",
        "encoders",
        "segment",
        "places",
        "models",
        "index",
        "ocr viz",
        "train",
        "refine",
        "pipeline",
        "server",
        "cli",
    )
)
#: What the package root may be imported for by any layer (it holds no code of its own).
ROOT_NAMES = {"__version__"}


def _level(unit: str) -> int:
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"geolocus.{unit} is in no layer: add it to LAYERS in {__file__}")


def _modules(root: Path = SRC) -> list[Path]:
    return sorted(root.rglob("*.py"))


def _unit(path: Path, root: Path = SRC) -> str | None:
    """The top-level folder or module of ``geolocus`` a file belongs to (``None``: the root)."""
    parts = path.relative_to(root).with_suffix("").parts
    return None if parts == ("__init__",) else parts[0]


def _imports(path: Path, root: Path = SRC) -> list[tuple[int, str, list[str]]]:
    """(line, imported geolocus module, names) of every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = ["geolocus", *path.relative_to(root).parent.parts]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("geolocus")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module.split(".")[0] == "geolocus":
                out.append((node.lineno, module, [a.name for a in node.names]))
    return out


def _violations(root: Path = SRC) -> list[str]:
    bad = []
    for path in _modules(root):
        unit = _unit(path, root)
        if unit is None:  # the root re-exports the public API lazily: it sits above all
            continue
        level = _level(unit)
        for line, module, names in _imports(path, root):
            parts = module.split(".")
            if len(parts) == 1 and set(names) <= ROOT_NAMES:  # `from geolocus import __version__`
                continue
            # anything else from the root is its lazy public API: above every layer
            target = parts[1] if len(parts) > 1 else "geolocus"
            if (len(LAYERS) if target == "geolocus" else _level(target)) > level:
                bad.append(
                    f"{path.relative_to(root.parent)}:{line}: {unit} imports {module} "
                    f"({target} is above {unit})"
                )
    return bad


def test_every_folder_is_in_a_layer() -> None:
    units = {u for p in _modules() if (u := _unit(p)) is not None}
    for u in units:
        _level(u)
    assert {"geo", "data", "refine", "cli"} <= units  # the walk found the package


def test_no_module_imports_an_upper_layer() -> None:
    bad = _violations()
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_the_lower_layers_never_reach_refine_pipeline_server_or_cli() -> None:
    """The issue's contract, stated on its own: geo, data, eval and index see no stage 2."""
    upper = {"refine", "pipeline", "server", "cli"}
    for path in _modules():
        if _unit(path) in {"geo", "data", "eval", "index"}:
            for line, module, _ in _imports(path):
                parts = module.split(".")
                assert len(parts) == 1 or parts[1] not in upper, f"{path}:{line} imports {module}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from geolocus.refine import create\n", True),
        ("def f():\n    from geolocus.pipeline import Geolocator\n", True),
        ("import geolocus.cli.main\n", True),
        ("from ..index import Database\n", True),
        ("from geolocus import Geolocator\n", True),
        ("from geolocus import __version__\n", False),
        ("from geolocus.geo import haversine_km\n", False),
        ("from .tables import read_coords\n", False),
    ],
)
def test_the_check_sees_lazy_relative_and_plain_imports(tmp_path, source, expected) -> None:
    """The checker itself can fail: an upper import planted in ``data`` is caught."""
    root = tmp_path / "geolocus"
    (root / "data").mkdir(parents=True)
    (root / "data" / "planted.py").write_text(source, encoding="utf-8")
    assert bool(_violations(root)) is expected


def test_the_command_line_starts_without_torch() -> None:
    """Imports moved to module level must not pull torch into ``geolocus --help``: the
    modules that need it load it when a model is made."""
    import subprocess
    import sys

    code = "import sys, geolocus.cli.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
