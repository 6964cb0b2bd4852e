"""The architecture as a test: nephi's subpackages import only the ones below them, and the
library never imports the application entry points (infer/, train/, data_prep/)."""

import ast
import pathlib

import nephi


PACKAGE = pathlib.Path(nephi.__file__).parent

LAYERS = ["errors", "records", "progress", "geometry", "transforms", "io", "models", "objectives",
          "config", "optim", "results", "data", "learn", "pipeline", "cli"]
"""Bottom to top; a module of layer k may import nephi modules of layers < k and its own."""


def layer_of(module: str) -> int:
    parts = module.split(".")
    assert parts[0] == "nephi"
    if len(parts) == 1:
        return len(LAYERS)  # the package itself: the public API on top of everything
    assert parts[1] in LAYERS, f"{module}: a subpackage or module missing from LAYERS"
    return LAYERS.index(parts[1])


def imports(path: pathlib.Path) -> list:
    """Absolute names of every module imported by ``path`` (also inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; nephi uses absolute imports"
            names.append(node.module)
    return names


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(part for part in rel.parts if part != "__init__")
        yield name, path


def test_every_module_belongs_to_a_layer():
    for name, _ in modules():
        layer_of(name)


def upward_imports(name: str, path: pathlib.Path) -> list:
    """The imports of module ``name`` (file ``path``) that reach a layer above its own."""
    own = layer_of(name)
    return [f"{name} imports {target}" for target in imports(path)
            if target.split(".")[0] == "nephi" and target != "nephi" and layer_of(target) > own]


def entry_point_imports(name: str, path: pathlib.Path) -> list:
    return [f"{name} imports {target}" for target in imports(path)
            if target.split(".")[0] in ("infer", "train", "data_prep", "benchmarks")]


def test_no_module_imports_a_layer_above_it():
    upward = [line for name, path in modules() for line in upward_imports(name, path)]
    assert not upward, "\n".join(upward)


def test_library_never_imports_the_entry_points():
    offenders = [line for name, path in modules() for line in entry_point_imports(name, path)]
    assert not offenders, "\n".join(offenders)


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The checkers themselves: a geometry module that imports the pipeline (also inside a
    function) or an entry point is reported; importing downward or within its layer is not."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from nephi.pipeline.api import register\n    import infer.main\n",
                   encoding="utf-8")
    assert upward_imports("nephi.geometry.bad", bad) == [
        "nephi.geometry.bad imports nephi.pipeline.api"]
    assert entry_point_imports("nephi.geometry.bad", bad) == [
        "nephi.geometry.bad imports infer.main"]
    good = tmp_path / "good.py"
    good.write_text("from nephi.errors import NephiInputError\nfrom nephi.geometry.grid import Grid\n",
                    encoding="utf-8")
    assert upward_imports("nephi.geometry.good", good) == []
