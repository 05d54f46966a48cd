"""One place for every artifact file name and the run tree (core/layout.py): no other module
spells a file name, and the tree the paths config builds is the one `Layout.of_run` reads back."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from twotower_cli.cli import CONFIG_DIR
from twotower_cli.core.layout import FILES, RUN_STAGES, STAGE_DIRS, Layout

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "twotower_cli"
THE_PLACE = PACKAGE / "core" / "layout.py"
# the package and the benchmark; bench/recbole/ runs in RecBole's own venv (`make recbole-env`),
# where twotower_cli cannot be imported
SCANNED = [p for d in (PACKAGE, ROOT / "bench") for p in sorted(d.rglob("*.py"))
           if p != THE_PLACE and "recbole" not in p.relative_to(ROOT).parts]  # fmt: skip
EXTENSIONS = "json|jsonl|npy|npz|parquet|pt|faiss|onnx|csv|tsv|txt|html|png|md|db|journal|yaml"
# a whole literal that names a file (or a path ending in one): `model.pt`, `outputs/x.json`,
# `.publish.json`, the `_vectors.npy` tail of f"{side}_vectors.npy"; not a bare suffix (".csv",
# a raw file's type), a glob ("*.yaml") or a message that mentions a file
NAME = re.compile(rf"^[\w./-]*\w\.({EXTENSIONS})$")
# an f-string that builds a name from a bare suffix: f"{name}.json". Config YAMLs
# (f"{group}/{name}.yaml": Hydra's config groups, not artifacts) are the one exception.
BUILT = re.compile(rf"^\.({EXTENSIONS.replace('|yaml', '')})$")


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def spelled_names(source: str) -> list[tuple[int, str]]:
    """(line, literal) of each string literal in `source` that spells an artifact file name;
    docstrings and message text around a name are prose, not names."""
    tree = ast.parse(source)
    docs, found = _docstrings(tree), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docs and NAME.search(node.value):
                found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr) and node.values:
            last = node.values[-1]
            if isinstance(last, ast.Constant) and BUILT.match(str(last.value)):
                found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def test_the_check_finds_names_spelled_every_way():
    source = '''
"""A docstring naming model.pt is prose."""
A = "manifest.json"
B = out / f"{side}_vectors.npy"
C = f"{name}.parquet"
D = Path("outputs/loadtest.json")
E = ".publish.json"
OK = (".csv", "*.yaml", f"{group}/{name}.yaml", f"{path}: no such file", "see docs/x.md")
'''
    assert [line for line, _ in spelled_names(source)] == [3, 4, 5, 6, 7]


def test_no_module_but_layout_spells_an_artifact_file_name():
    assert len(SCANNED) > 90 and ROOT / "bench" / "run.py" in SCANNED
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {text}"
        for path in SCANNED
        for line, text in spelled_names(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, "file names outside core/layout.py (ask FILES or Layout):\n" + "\n".join(
        offenders
    )


def test_layout_paths_use_the_names():
    L = Layout.named("outputs", "ml100k", "inbatch", "dssm")
    assert L == Layout.of_run("outputs/ml100k/sample/inbatch/dssm")
    assert (
        L.model
        == L.train / FILES.model
        == Path("outputs/ml100k/sample/inbatch/dssm/train/model.pt")
    )
    assert L.split("tasks_test") == Path("outputs/ml100k/preprocess/tasks_test.parquet")
    assert L.vectors("user").name == "user_vectors.npy" and L.ids("item").name == "item_ids.npy"
    assert L.model_artifact("field_weights").name == "field_weights.json"
    assert L.faiss_index == Path("outputs/ml100k/sample/inbatch/dssm/index/items.faiss")
    assert (L.dataset, L.label, L.run) == ("ml100k", "inbatch/dssm", "dssm")


def composed(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # `${hydra:...}` paths resolve as in a run
    return cfg


def test_the_paths_config_and_of_run_derive_one_tree():
    # the run dir the paths config makes, read back as compare and report read it
    for overrides in ((), ("model=senet", "sampler=popularity", "protocol=loo")):
        cfg = composed(*overrides)
        L = Layout.of(cfg.paths)
        assert Layout.of_run(L.root, L.out) == L
        assert all(L.stage(s) == L.root / s for s in RUN_STAGES)
        assert {L.stage(s) for s in STAGE_DIRS} >= {L.preprocess, L.sample}


def test_find_runs_finds_a_run_of_any_dataset_and_sampler(tmp_path: Path):
    for run_dir in ("ml100k/sample/inbatch/cmp-a", "synthetic/sample/hard/cmp-b",
                    "ml100k/sample/inbatch/other"):  # fmt: skip
        (tmp_path / run_dir / "train").mkdir(parents=True)
    assert Layout.find_runs(tmp_path, "cmp-b") == [tmp_path / "synthetic/sample/hard/cmp-b"]
    assert Layout.find_runs(tmp_path, "missing") == []
