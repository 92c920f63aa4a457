"""The package's import structure: two import roots, each a folder of its name, and an engine whose
modules import downward only."""

import ast
import graphlib
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE, PIPELINES = "tfx_model_pruning", "tfx_model_pruning_pipelines"
# Repository folder -> the one import package inside it, a folder of the same name.
FOLDERS = {"components": PACKAGE, "pipelines": PIPELINES}


def _modules() -> dict[str, str]:
    """Module name -> file, for every module of both packages, read off the folder tree alone."""
    found = {}
    for folder in FOLDERS:
        for directory, subfolders, files in os.walk(os.path.join(ROOT, folder)):
            subfolders[:] = [name for name in subfolders if name != "__pycache__"]
            for name in files:
                if not name.endswith(".py"):
                    continue
                relative = os.path.relpath(os.path.join(directory, name), os.path.join(ROOT, folder))
                parts = relative[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = os.path.join(directory, name)
    return found


def _imports(path: str, modules: dict[str, str]) -> list[tuple[str, bool]]:
    """(imported package module, inside a function?) for each import of the package in ``path``."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    in_function = {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(function)
    }
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from package import module` names a module; `from module import name` names its module.
            names = [f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in modules]
            names = names or [node.module]
        for name in names:
            if name.split(".")[0] in (PACKAGE, PIPELINES, "components", "pipelines"):
                found.append((name, id(node) in in_function))
    return found


def test_each_repository_folder_holds_exactly_its_one_package():
    for folder, package in FOLDERS.items():
        entries = sorted(name for name in os.listdir(os.path.join(ROOT, folder)) if name != "__pycache__")
        assert entries == [package], f"{folder}/ holds {entries}"
        assert os.path.isfile(os.path.join(ROOT, folder, package, "__init__.py"))


def test_every_import_of_the_package_names_a_module_the_folder_tree_has():
    modules = _modules()
    stray = [
        (os.path.relpath(path, ROOT), name)
        for path in modules.values()
        for name, _ in _imports(path, modules)
        if not any(name == module or name.startswith(module + ".") for module in modules)
    ]
    assert not stray


def test_python_imports_every_module_from_the_file_the_folder_tree_names():
    """What `python -c "import X; print(X.__file__)"` prints is the file at X's path in the tree."""
    import importlib.util

    moved = {
        name: (os.path.realpath(importlib.util.find_spec(name).origin), os.path.realpath(path))
        for name, path in _modules().items()
    }
    assert {name: found for name, (found, expected) in moved.items() if found != expected} == {}
    assert {PACKAGE, PIPELINES, f"{PACKAGE}.engine.graph", f"{PIPELINES}.cli"} <= set(moved)


def test_the_engine_has_no_import_cycle_and_no_import_hidden_in_a_function():
    modules = _modules()
    engine = {name: path for name, path in modules.items() if name.startswith(f"{PACKAGE}.engine.")}
    graph, hidden = {}, []
    for name, path in engine.items():
        imported = _imports(path, modules)
        graph[name] = {target for target, _ in imported if target in engine}
        hidden += [(name, target) for target, in_function in imported if in_function]
    assert not hidden, f"function-level imports (a cycle dodged?): {hidden}"
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError naming the cycle
    assert order.index(f"{PACKAGE}.engine.graph") < order.index(f"{PACKAGE}.engine.structured")


def test_the_whole_package_has_no_import_cycle():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        # A package's __init__ re-exports its modules; an edge from a module to its own package
        # is Python loading the parent first, not a dependency.
        graph[name] = {
            target
            for target, _ in _imports(path, modules)
            if target in modules and target != name and not name.startswith(target + ".")
        }
    graphlib.TopologicalSorter(graph).prepare()


@pytest.mark.integration
def test_a_project_with_its_own_components_and_pipelines_packages_imports_both(tmp_path):
    for package in ("components", "pipelines"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f"OWNER = 'the user project: {package}'\n")
    script = textwrap.dedent(
        """
        import components, pipelines
        import tfx_model_pruning
        from tfx_model_pruning import PruneComponent, PruningReport
        from tfx_model_pruning.engine import prune_saved_model
        from tfx_model_pruning_pipelines import cli
        print(components.OWNER, "|", pipelines.OWNER, "|", PruningReport.TYPE_NAME, "|", cli.__name__)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == (
        "the user project: components | the user project: pipelines | tfx_model_pruning.PruningReport | "
        "tfx_model_pruning_pipelines.cli"
    )
