"""The dependency rule of docs/architecture.md, checked on the source: which layer may import which,
what the contract package and the runtime may import from outside, and module size.

Every import counts, the lazy ones inside functions too: a lazy import still ties the layers.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = "mlflow_deploy_plugins"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: layer -> the layers it may import (itself always). A layer is a subpackage or a top module.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "errors": set(),
    "serving": {"core"},
    "onnx": {"core", "errors"},
    "bundle": {"core", "errors", "onnx"},
    "monitoring": {"core", "errors", "onnx"},
    # targets run the runtime (its settings name the container's environment) and build bundles
    "targets": {"core", "errors", "bundle", "serving"},
    # the webhook receiver runs on the runtime's HTTP layer and answers with its error body;
    # deployments go through MLflow's deployments API (targets.deploy), never a target module
    "registry": {"core", "errors", "onnx", "bundle", "serving", "targets.deploy"},
    # the console script wires every layer's commands; the package root imports lazily
    "cli": {"*"},
    "__init__": {"*"},
}
#: What the contract package may import from outside the standard library, at module level.
CORE_THIRD_PARTY = {"numpy"}
#: ... and lazily, inside the one function that needs it.
CORE_LAZY_THIRD_PARTY = {"onnxruntime"}
#: Never imported by the runtime, not even lazily (the image does not hold them).
RUNTIME_FORBIDDEN = {"mlflow", "pandas", "sklearn", "pyarrow", "scipy", "skl2onnx", "onnx", "click"}
MAX_LINES = 450


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(absolute module, lazy)`` for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    module = _name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        lazy = False
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # "from pkg import sub" may name a submodule: count it as "pkg.sub"
            names = [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        lazy = node.col_offset > 0
        found.extend((n, lazy) for n in names)
    return found


def _target_layer(imported: str) -> str | None:
    if not imported.startswith(PACKAGE + "."):
        return None
    parts = imported.split(".")
    if parts[1] == "targets" and len(parts) > 2 and parts[2] == "deploy":
        return "targets.deploy"
    return parts[1] if parts[1] in ALLOWED else None


def _is_stdlib(name: str) -> bool:
    return name.split(".")[0] in sys.stdlib_module_names or name == "__future__"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_layers_import_only_what_the_rule_allows(path):
    layer = _layer(_name(path))
    allowed = ALLOWED[layer]
    if "*" in allowed:
        return
    bad = []
    for imported, _lazy in _imports(path):
        target = _target_layer(imported)
        if target is None or target == layer:
            continue
        if target == "targets.deploy" and layer == "targets":
            continue
        if target not in allowed:
            bad.append(imported)
    assert not bad, f"{layer} may import {sorted(allowed) or 'nothing'} of the package, not {bad}"


@pytest.mark.parametrize("path", sorted((ROOT / "core").glob("*.py")), ids=lambda p: p.name)
def test_the_contract_package_needs_numpy_and_the_standard_library_only(path):
    for imported, lazy in _imports(path):
        if imported.startswith(PACKAGE + ".") or _is_stdlib(imported):
            continue
        top = imported.split(".")[0]
        allowed = CORE_THIRD_PARTY | (CORE_LAZY_THIRD_PARTY if lazy else set())
        assert top in allowed, f"core/{path.name} imports {imported}"


@pytest.mark.parametrize(
    "path", sorted((ROOT / "serving").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_the_runtime_never_imports_the_heavy_stack(path):
    # The fresh-venv test (tests/serving/test_runtime_isolation.py) proves it at run time for
    # the paths a request takes; this covers every module and every branch.
    tops = {imported.split(".")[0] for imported, _ in _imports(path)}
    assert not tops & RUNTIME_FORBIDDEN, f"{path} imports {sorted(tops & RUNTIME_FORBIDDEN)}"


def test_only_mlflow_calls_the_target_modules():
    # Targets are plugins MLflow loads by entry point; our code reaches them through
    # mlflow.deployments (targets.deploy), so what users script against is what we use.
    offenders = []
    for path in _modules():
        module = _name(path)
        if _layer(module) == "targets":
            continue
        for imported, _ in _imports(path):
            if imported.startswith(f"{PACKAGE}.targets.") and _target_layer(imported) != (
                "targets.deploy"
            ):
                offenders.append((module, imported))
    assert not offenders


def test_the_rule_test_sees_imports():
    # Guard against a parser that silently finds nothing (then every rule above would pass).
    imports = dict(_imports(ROOT / "serving" / "model.py"))
    assert f"{PACKAGE}.core.session.make_session" in imports
    assert any(name.startswith("onnxruntime") for name, _ in _imports(ROOT / "core" / "session.py"))
