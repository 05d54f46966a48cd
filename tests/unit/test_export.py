"""`twotower export`: the ONNX user tower matches PyTorch, and the bundle alone (onnxruntime,
faiss, JSON) reproduces what `twotower serve` recommends."""

from __future__ import annotations

from pathlib import Path

from conftest import SMALL, twotower


def test_export_without_a_trained_run_names_the_command(tmp_path, capsys):
    assert twotower("export", *SMALL, f"paths.out={tmp_path / 'outputs'}") == 2
    assert "run `twotower preprocess` first" in capsys.readouterr().err


def _imports(path: Path) -> set[str]:
    """The twotower_cli modules a source file imports (at any depth, lazy imports included)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("twotower_cli")}


def test_export_and_serve_share_the_user_tower_module_not_each_other():
    pkg = Path(__file__).resolve().parents[2] / "twotower_cli"
    export = _imports(pkg / "export" / "bundle.py")
    serving = set().union(*(_imports(p) for p in (pkg / "serve").glob("*.py")))
    assert (
        "twotower_cli.export.user_tower" in export and "twotower_cli.export.user_tower" in serving
    )
    assert not {n for n in export if n.startswith("twotower_cli.serve")}
    assert not {n for n in serving if n.startswith("twotower_cli.export.bundle")}
    # user_tower is a leaf for serving: it imports neither
    tower = _imports(pkg / "export" / "user_tower.py")
    assert not {
        n for n in tower if n.startswith(("twotower_cli.serve", "twotower_cli.export.bundle"))
    }
    # and no module of the package is over ~400 lines
    assert max(len(p.read_text().splitlines()) for p in (pkg / "serve").glob("*.py")) < 400
