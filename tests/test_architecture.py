"""The package's shape: no import cycles, small modules, a light top-level import, registries that drive everything.

The import graph is read from the source with `ast` (module-level and function-level imports alike, except those
under `if TYPE_CHECKING:`), so a lazy import inside a function cannot hide a cycle.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "optimum_gblm"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return skipped


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules that `path` imports (a `from pkg import name` counts as pkg.name when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_nodes(tree)
    current = module_name(path)
    package = current if path.name == "__init__.py" else current.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            names = [root] + [f"{root}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name in modules and name != current:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph = {module_name(f): imports_of(f, modules) for f in files}
    # Importing `a.b.c` runs `a/__init__` and `a/b/__init__` first: a child depends on its parent packages' bodies,
    # but a package __init__ that re-exports its children must not count as a cycle with them, so only the imports
    # written in the files form edges.
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_import_parser_sees_lazy_imports(tmp_path):
    (tmp_path / "pkg").mkdir()
    source = tmp_path / "pkg" / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .hidden import x\n"
        "def f():\n    from .lazy import y\n    from . import sibling\n"
    )
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "pkg"
    try:
        found = imports_of(source, {"pkg.hidden", "pkg.lazy", "pkg.sibling", "pkg.mod"})
    finally:
        PACKAGE = saved
    assert found == {"pkg.lazy", "pkg.sibling"}


def test_no_import_cycles_in_the_package():
    graph = import_graph()
    assert len(graph) > 40 and "optimum_gblm.pruner" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_lower_layers_never_import_the_pruner_or_the_commands():
    """The data flow points one way: commands -> zoo -> pruner -> the rest."""
    graph = import_graph()
    above = {"optimum_gblm.pruner", "optimum_gblm.zoo", "optimum_gblm.commands"}
    allowed = ("optimum_gblm.commands", "optimum_gblm.zoo", "optimum_gblm.pruner")
    for module, imported in graph.items():
        if module.startswith(allowed) or module == "optimum_gblm":
            continue
        bad = {name for name in imported if any(name == a or name.startswith(a + ".") for a in above)}
        assert not bad, f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path: Path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines (at most {MAX_LINES})"


def test_top_level_import_is_light_and_lazy_names_resolve():
    code = (
        "import sys, optimum_gblm\n"
        "heavy = [m for m in ('transformers', 'timm', 'huggingface_hub', 'matplotlib', 'lm_eval') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from optimum_gblm import GBLMGradientCallback, GBLMPruner, register_method, register_adapter\n"
        "import transformers\n"
        "assert issubclass(GBLMGradientCallback, transformers.TrainerCallback)\n"
        "assert all(hasattr(optimum_gblm, name) for name in optimum_gblm.__all__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def parsed_modules(outside: str) -> list[tuple[Path, ast.Module]]:
    """Every module of the package outside the sub-package `outside`, with its syntax tree."""
    paths = [p for p in sorted(PACKAGE.rglob("*.py")) if outside not in p.relative_to(PACKAGE).parts]
    return [(p, ast.parse(p.read_text(encoding="utf-8"))) for p in paths]


def test_no_method_names_outside_the_registry():
    """Cards, the CLI and the pipelines read method metadata; only methods/ may spell a built-in method's name."""
    from optimum_gblm import list_methods

    names = [n for n in list_methods() if n not in ("gradient",)]  # "gradient" is also an ordinary word
    allowed = {("publishing/cards.py", "gblm")}  # the project's Hub tag, on every card whatever the method
    offenders = []
    for path, tree in parsed_modules(outside="methods"):
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        where = str(path.relative_to(PACKAGE))
        for node in ast.walk(tree):
            spelled = isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
            if spelled and id(node) not in docstrings and (where, node.value) not in allowed:
                offenders.append(f"{where}:{node.lineno} {node.value!r}")
    assert not offenders, "\n".join(offenders)


# Names that are also ordinary words or the command's own name: prose may use them without listing methods.
PROSE_WORDS = {"gradient", "magnitude", "gblm"}
PROSE_ROOTS = (PACKAGE / "commands", PACKAGE.parent / "optimum")


def listed_names(text: str, names: set[str]) -> set[str]:
    """The registered names `text` spells as whole words (case-insensitive; '-' and '_' belong to a word, so
    'wanda-sp' is not 'wanda' and './my-llama' is no family). A command line's `--method NAME` is an example,
    not a list: it does not count."""
    text = re.sub(r"--method[ =]\S+", " ", text.lower())
    return {word for word in re.findall(r"[\w-]+", text) if word in names}


def hand_written_lists(paths: list[Path], names: set[str]) -> list[str]:
    """Every string literal (docstrings, help texts and the literal parts of f-strings) that spells two or more
    of `names`: a list that the next registered method or family would make wrong."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                spelled = listed_names(node.value, names)
                if len(spelled) >= 2:
                    where = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path.name
                    found.append(f"{where}:{node.lineno} {sorted(spelled)}")
    return found


def test_hand_written_lists_are_found(tmp_path):
    source = tmp_path / "help.py"
    source.write_text(
        'HELP = "Prune with GBLM-Pruner, Wanda, SparseGPT or magnitude"\n'
        'EXAMPLES = "  cli --method wanda --pattern 2:4 --model ./my-llama\\n  cli --method=sparsegpt"\n'
        'ONE = f"--method {1}: wanda-sp scores whole heads"\n'
        'def f():\n    """Qwen2 and LLaMA models."""\n'
    )
    methods = {"gblm", "wanda", "sparsegpt", "wanda-sp", "magnitude"} - PROSE_WORDS
    assert hand_written_lists([source], methods) == ["help.py:1 ['sparsegpt', 'wanda']"]
    assert hand_written_lists([source], {"llama", "qwen2"}) == ["help.py:5 ['llama', 'qwen2']"]


def test_no_hand_written_method_or_family_lists_in_the_cli_prose():
    """The CLI's help texts and docstrings take their lists of methods and model families from the registries
    (commands/overview.py); spelling two names in one text is a list that goes stale when one is registered."""
    from optimum_gblm import list_methods
    from optimum_gblm.adapters.families import DECODER_FAMILIES

    paths = sorted(p for root in PROSE_ROOTS for p in root.rglob("*.py"))
    assert any(p.name == "register_gblm.py" for p in paths) and any(p.name == "prune.py" for p in paths)
    offenders = hand_written_lists(paths, set(list_methods()) - PROSE_WORDS)
    offenders += hand_written_lists(paths, set(DECODER_FAMILIES))
    assert not offenders, "\n".join(offenders)


def test_no_metric_names_outside_the_registry():
    """Cards, the CLI, planning and recovery read a metric's registered metadata (label, direction, formatting,
    inputs); only evaluation/ may spell a metric's name, and an adapter only to declare its `metric_name`."""
    from optimum_gblm.evaluation import list_metrics

    names = set(list_metrics())
    offenders = []
    for path, tree in parsed_modules(outside="evaluation"):
        declared = {
            id(node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["metric_name"]
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in declared:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert not offenders, offenders
