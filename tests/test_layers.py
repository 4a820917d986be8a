"""The package layers of docs/ARCHITECTURE.md: a module imports only from its own layer or the
layers below it, and a stage package uses another stage's engines, never its driver (main.py)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# lowest first; a module of layer i may import the project packages of layers 0..i
LAYERS = [
    ("utils.base",),
    ("models",),
    ("datasets",),
    ("utils.ood",),
    ("utils.figures",),
    ("utils.cam", "utils.train", "utils.evaluate", "utils.scoring"),
    ("reporting",),
]
STAGES = LAYERS[-2]
# the method is arrays in, scores out: it reads no image file and builds no network
METHOD_MAY_NOT_IMPORT = ("datasets", "models")


def _package_of(module):
    for layer, packages in enumerate(LAYERS):
        for package in packages:
            if module == package or module.startswith(package + "."):
                return layer, package
    return None


def _imports(path):
    """Project modules a file imports (absolute `import x` / `from x import y`, at any depth)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            for alias in node.names:  # `from utils.cam import main` imports utils.cam.main
                yield f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def _package_modules():
    for top in ("models", "datasets", "utils", "reporting"):
        for path in sorted((ROOT / top).rglob("*.py")):
            yield ".".join(path.relative_to(ROOT).with_suffix("").parts), path


def test_every_package_module_has_a_layer():
    stray = [name for name, _ in _package_modules() if _package_of(name) is None
             and name not in ("utils", "utils.__init__")]
    assert stray == [], f"modules outside every layer of docs/ARCHITECTURE.md: {stray}"


@pytest.mark.parametrize("name,path", list(_package_modules()), ids=lambda value: str(value))
def test_imports_go_down_the_layers(name, path):
    own = _package_of(name)
    if own is None:
        return
    own_layer, own_package = own
    for imported in _imports(path):
        target = _package_of(imported)
        if target is None:
            continue
        layer, package = target
        assert layer <= own_layer, f"{name} (layer {own_package}) imports {imported} (layer {package}, above it)"
        if package in STAGES and package != own_package:
            assert not imported.startswith(package + ".main"), \
                f"{name} imports the driver {imported} of another stage"


@pytest.mark.parametrize("name,path", [(n, p) for n, p in _package_modules() if n.startswith("utils.ood")],
                         ids=lambda value: str(value))
def test_the_ood_method_reads_no_files_and_builds_no_network(name, path):
    for imported in _imports(path):
        assert not imported.startswith(tuple(f"{package}." for package in METHOD_MAY_NOT_IMPORT)) and \
            imported not in METHOD_MAY_NOT_IMPORT, f"{name} imports {imported}"
