"""The public face (``tuneloop.api``, the command line, the package's re-exports) sits on top: nothing under it
imports it, so the library's layers can be used, tested and changed without the face."""

import ast
from pathlib import Path

import tuneloop

PACKAGE = Path(tuneloop.__file__).parent
FACE = {"api.py", "cli.py", "cli_registry.py", "__init__.py", "__main__.py"}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, as dotted names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_module_under_the_face_imports_it():
    below = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).as_posix() not in FACE]
    assert len(below) > 20  # the scan found the library
    offenders = {p.relative_to(PACKAGE).as_posix(): sorted(n for n in imported_modules(p)
                                                          if n in ("tuneloop.api", "tuneloop.cli")
                                                          or n.startswith(("tuneloop.api.", "tuneloop.cli.")))
                 for p in below}
    assert {name: found for name, found in offenders.items() if found} == {}


# A kind of data lives in its own module of tasks/ (and its examples in data/, its networks in models/); the rest of
# the library reaches it through the Task protocol and the registries, never by asking which kind it has.
KIND_FOLDERS = ("tasks/", "data/", "models/")
KIND_CLASSES = {"TextTask", "TableTask", "ImageTask", "SeriesTask", "TextExamples", "TableExamples", "ImageExamples",
                "SeriesExamples"}


def kind_names() -> set[str]:
    from tuneloop.tasks import TASKS

    return ({task.modality for task in TASKS.values()} | {task.adapter_name for task in TASKS.values()}
            | {"image-scratch"})


def branches_on_kind(path: Path, kinds: set[str]) -> list[str]:
    """Where ``path`` compares with a kind's name, keys a table by one, names a kind's class, or probes a task
    with hasattr/getattr."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Compare):
            constants = [n for n in [node.left, *node.comparators] if isinstance(n, ast.Constant)]
            constants += [e for n in node.comparators if isinstance(n, (ast.Tuple, ast.List, ast.Set))
                          for e in n.elts if isinstance(e, ast.Constant)]
            found += [f"{line}: compares with {c.value!r}" for c in constants if c.value in kinds]
        elif isinstance(node, ast.Dict):
            found += [f"{line}: a table keyed by {k.value!r}" for k in node.keys
                      if isinstance(k, ast.Constant) and k.value in kinds]
        elif isinstance(node, ast.Name) and node.id in KIND_CLASSES:
            found.append(f"{line}: names {node.id}")
        elif isinstance(node, ast.ImportFrom):
            found += [f"{line}: imports {a.name}" for a in node.names if a.name in KIND_CLASSES]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
              and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "task"):
            found.append(f"{line}: probes the task with {node.func.id}")
    return found


def test_no_module_outside_a_kinds_own_branches_on_the_kind_of_data():
    kinds = kind_names()
    assert {"text", "tabular", "image", "hf_text"} <= kinds  # the registry is read, not assumed
    outside = [p for p in PACKAGE.rglob("*.py") if not p.relative_to(PACKAGE).as_posix().startswith(KIND_FOLDERS)]
    found = {p.relative_to(PACKAGE).as_posix(): branches for p in outside if (branches := branches_on_kind(p, kinds))}
    assert found == {}


def test_the_branch_check_finds_a_branch(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('if modality == "tabular":\n    x = {"text": 1}\n'
                      'from a import TextTask\nhasattr(task, "features")\n')
    assert len(branches_on_kind(sample, kind_names())) == 4
