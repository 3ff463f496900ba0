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

#: layer -> the layers it may import (itself always). A layer is a subpackage or a top module,
#: except the modules named in SPECIAL, which other layers reach on their own.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "errors": set(),
    "serving": {"core"},
    # the serving bundle inside MLServer: a layer of its own beside serving/, because MLServer
    # imports pandas (never in the lean runtime); it shares serving/'s codecs and model
    "mlserver_runtime": {"core", "serving"},
    # the mlserver target's image entrypoint: MLServer in-process, the runtime's port takeover
    "mlserver_serve": {"core", "serving"},
    "onnx": {"core", "errors"},
    "bundle": {"core", "errors", "onnx"},
    # registry access (reads that return None when absent, not-found handling, tags), below
    # everything that reads the registry
    "registry.gateway": {"core", "errors"},
    "monitoring": {"core", "errors", "onnx", "registry.gateway"},
    # deployments through MLflow's deployments API, never a target module
    "targets.deploy": {"core", "errors", "registry.gateway"},
    # targets run the runtime (its settings name the container's environment) and build bundles
    "targets": {"core", "errors", "bundle", "serving", "targets.deploy"},
    # the webhook receiver runs on the runtime's HTTP layer and answers with its error body
    "registry": {
        "core",
        "errors",
        "onnx",
        "bundle",
        "serving",
        "registry.gateway",
        "targets.deploy",
    },
    # batch scoring: the runtime's session and decoding in-process, or MLflow's Spark UDF over
    # the twin (bundles and conversion for models that are not ONNX yet)
    "batch": {"core", "errors", "onnx", "bundle", "serving"},
    # the console script: cli.py, console.py and every package's cli.py wire the layers
    "cli": {"*"},
    "__init__": {"*"},
}
SPECIAL = {
    f"{PACKAGE}.registry.gateway": "registry.gateway",
    f"{PACKAGE}.targets.deploy": "targets.deploy",
    f"{PACKAGE}.console": "cli",
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
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str:
    for prefix, layer in SPECIAL.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    if parts[-1] == "cli":
        return "cli"
    return parts[1]


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


def _target_layer(imported: str) -> str | None:
    """The layer an imported name belongs to (None outside the package)."""
    if not imported.startswith(PACKAGE + ".") or imported == f"{PACKAGE}.__version__":
        return None  # the version is the one name of the package root anyone may import
    # "from pkg.mod import name": the name may be an attribute; find the module it is in
    parts = imported.split(".")
    while len(parts) > 1 and not _exists(".".join(parts)):
        parts.pop()
    return _layer(".".join(parts))


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(absolute module or module.name, lazy)`` for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    module = _name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        found.extend((n, node.col_offset > 0) for n in names)
    return found


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
        if target is None or target == layer or target in allowed:
            continue
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


@pytest.mark.parametrize("module", ["mlserver_runtime.py", "mlserver_serve.py"])
def test_the_mlserver_runtime_imports_no_mlflow(module):
    # MLServer brings pandas; our code inside it still needs no mlflow, sklearn or converters
    tops = {imported.split(".")[0] for imported, _ in _imports(ROOT / module)}
    assert not tops & (RUNTIME_FORBIDDEN - {"pandas"}), sorted(tops & RUNTIME_FORBIDDEN)
    assert "mlserver" in tops  # the rule test sees this module's imports


def test_only_mlflow_calls_the_target_modules():
    # Targets are plugins MLflow loads by entry point; our code reaches them through
    # mlflow.deployments (targets.deploy), so what users script against is what we use.
    offenders = [
        (_name(path), imported)
        for path in _modules()
        if _layer(_name(path)) != "targets"
        for imported, _ in _imports(path)
        if _target_layer(imported) == "targets"
    ]
    assert not offenders


def test_nothing_below_the_console_script_imports_it():
    offenders = [
        (_name(path), imported)
        for path in _modules()
        if _layer(_name(path)) not in ("cli", "__init__")
        for imported, _ in _imports(path)
        if _target_layer(imported) == "cli"
    ]
    assert not offenders


def test_the_rule_test_sees_imports():
    # Guard against a parser that silently finds nothing (then every rule above would pass).
    imports = dict(_imports(ROOT / "serving" / "model.py"))
    assert f"{PACKAGE}.core.session.make_session" in imports
    assert any(name.startswith("onnxruntime") for name, _ in _imports(ROOT / "core" / "session.py"))
    assert _target_layer(f"{PACKAGE}.registry.gateway.is_not_found") == "registry.gateway"
    assert _target_layer(f"{PACKAGE}.registry.promote.promote") == "registry"
    assert _target_layer(f"{PACKAGE}.core.tags") == "core"
    assert _target_layer(f"{PACKAGE}.console.fail") == "cli"
    assert _layer(f"{PACKAGE}.monitoring.cli") == "cli"


#: Modules allowed past MAX_LINES, with why: one connection's HTTP/1.1 state machine reads best
#: whole (uvicorn's httptools_impl.py, the model for it, is ~570 lines), and its per-request path
#: inlines small steps (the body budget) because each call there costs throughput (measured in
#: docs/benchmarks-serving.md).
LARGER = {"serving/protocol.py": 510}  # next seam: the ordered response queue


def test_no_module_is_over_the_size_limit():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules()}
    over = {k: v for k, v in sizes.items() if v > LARGER.get(k, MAX_LINES)}
    assert not over, f"split these along their seams (limit {MAX_LINES} lines): {over}"
