"""The house reads one way: packages in layers (a module imports only its own package or a lower
one), no import circle inside the package (lazy imports in functions included: they hide
circles, they do not break them), no module past ~400 lines and no function past ~60."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "twotower_cli"
MAX_LINES = 420
MAX_FUNCTION_LINES = 60
# low to high; packages on one rung may not import each other; the top-level modules
# (`__init__`, `cli`) sit between pipeline and tools, `api` (the Python API over cli's stage
# runner and serve) above them, `__main__` beside tools
LAYERS = [
    {"core"},
    {"data"},
    {"models"},
    {"artifacts"},
    {"retrieval"},
    {"training"},
    {"samplers"},
    {"export"},
    {"serve", "report"},
    {"pipeline"},
    {"", "cli"},
    {"api"},
    {"tools", "__main__"},
]
# functions over the cap when the cap came in, with their length then as a ceiling: shrink them,
# never grow them (issue 24's refactor of the training loop and loaders)
LONG_FUNCTIONS = {
    "twotower_cli.data.csv_data.load": 85,
    "twotower_cli.data.news.load": 70,
    "twotower_cli.data.synthetic.generate_chunks": 81,
    "twotower_cli.pipeline.tune._retrain_best": 66,
    "twotower_cli.report.diagnostics.analyse": 64,
    "twotower_cli.serve.http.create_app": 75,
    "twotower_cli.serve.limits.guarded_http": 61,
    "twotower_cli.tools.news_sim.write": 105,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its body."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importing module's package
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
                # `from pkg import sub` imports the submodule `pkg.sub` when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]  # fmt: skip
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_the_graph_sees_the_imports_it_should():
    graph = import_graph()
    assert "twotower_cli.core.keys" in graph["twotower_cli.retrieval.metrics"]
    assert "twotower_cli.samplers.base" in graph["twotower_cli.samplers.inbatch"]
    assert (
        "twotower_cli.artifacts.checkpoint" in graph["twotower_cli.pipeline.stages"]
    )  # `from pkg import mod`
    assert graph["twotower_cli.core.keys"] == set()  # the leaf


def test_find_cycle_finds_a_planted_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_no_module_is_too_long(path: Path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def rung(module: str) -> int:
    """The layer of a module: its package under twotower_cli (or the top-level module name)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"{module}: package {top!r} has no layer; add it to LAYERS")


def test_the_layer_test_catches_an_upward_import():
    assert rung("twotower_cli.core.keys") < rung("twotower_cli.retrieval.metrics")
    assert rung("twotower_cli.serve.http") == rung("twotower_cli.report.page")
    assert rung("twotower_cli.cli") < rung("twotower_cli.tools.compare")


def test_every_import_goes_to_its_own_package_or_a_lower_layer():
    bad = []
    for module, targets in import_graph().items():
        for target in targets:
            same_package = module.split(".")[:2] == target.split(".")[:2]
            if target == "twotower_cli" or same_package:
                continue
            if rung(target) >= rung(module):
                bad.append(f"{module} -> {target}")
    assert not bad, "imports upward or sideways: " + ", ".join(sorted(bad))


def long_functions() -> dict[str, int]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        prefix = module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found[f"{prefix}.{node.name}"] = length
    return found


def test_no_function_is_too_long():
    found = long_functions()
    over = {f: n for f, n in found.items() if n > LONG_FUNCTIONS.get(f, MAX_FUNCTION_LINES)}
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines (or over their ceiling): {over}"
    assert set(LONG_FUNCTIONS) >= set(found)
    # a shrunk function leaves the list, so the list only ever gets shorter
    shrunk = set(LONG_FUNCTIONS) - set(found)
    assert not shrunk, f"now under the cap, remove from LONG_FUNCTIONS: {sorted(shrunk)}"


def test_the_data_layer_imports_no_torch():
    # preprocess loads only what it uses: torch alone costs ~0.4 GiB resident (issue 24)
    import subprocess
    import sys

    modules = sorted(m for m in import_graph() if m.startswith("twotower_cli.data"))
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", modules


def test_the_preprocess_stage_runs_without_torch_or_faiss(tmp_path):
    # `twotower preprocess` routes to pipeline/prep.py: the data layer only (on a tiny log its
    # peak resident memory went from 398 to 196 MiB, issue 24)
    import subprocess
    import sys

    code = (
        "import sys\nfrom twotower_cli import cli\n"
        f"sys.argv = ['twotower', 'preprocess', 'dataset=synthetic', 'dataset.load.n_users=50', "
        f"'dataset.load.n_items=40', 'dataset.load.n_interactions=600', "
        f"'paths.out={tmp_path}', 'threads=1']\n"
        "try:\n    cli.main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in ('torch', 'faiss', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
    assert (tmp_path / "synthetic" / "preprocess" / "manifest.json").exists()


def test_the_samplers_import_no_torch_outside_their_train_time_steps():
    # `twotower sample` instantiates a sampler: its modules load torch only in batch_fn
    # (steps.py); mining.py ranks a mined band with faiss, for sampler=hard kind=mined alone
    import subprocess
    import sys

    modules = sorted(m for m in import_graph() if m.startswith("twotower_cli.samplers")
                     and m.rsplit(".", 1)[-1] not in ("steps", "mining"))  # fmt: skip
    code = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        "print(sorted(m for m in ('torch', 'faiss', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", modules
    assert "twotower_cli.samplers.inbatch" in modules


def test_the_sample_stage_runs_without_torch_or_faiss(tmp_path):
    # `twotower sample` routes to pipeline/prep.py beside preprocess: an in-batch sampler's
    # streamed pass and an explicit one's fit, with torch, faiss and onnxruntime unloaded
    import json
    import subprocess
    import sys

    code = (
        "import sys\nfrom twotower_cli import cli\n"
        "common = ['dataset=synthetic', 'dataset.load.n_users=50', 'dataset.load.n_items=40', "
        f"'dataset.load.n_interactions=600', 'paths.out={tmp_path}', 'threads=1']\n"
        "for stage in ('preprocess', 'sample sampler=inbatch', 'sample sampler=random'):\n"
        "    sys.argv = ['twotower', *stage.split(), *common]\n"
        "    try:\n        cli.main()\n"
        "    except SystemExit as e:\n        assert not e.code, (stage, e.code)\n"
        "print(sorted(m for m in ('torch', 'faiss', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
    sample = tmp_path / "synthetic" / "sample"
    figures = {s: json.loads((sample / s / "manifest.json").read_text())["figures"]
               for s in ("inbatch", "random")}  # fmt: skip
    assert (figures["inbatch"]["n_neg"], figures["random"]["n_neg"]) == (0, 4)
    assert figures["inbatch"]["examples"] == figures["random"]["examples"] > 0
