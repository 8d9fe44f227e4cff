"""The boundaries DESIGN.md draws, checked on the source: a service never imports another service's
package nor the demo, libs import no service at all, no service's distribution depends on another's,
and the monitor (no torch in its dependencies) imports without torch.

Imports are read with `ast`: `import x`, `from x import y`, and the module names given as string
literals (or module-level string constants) to `importlib.import_module`, `importlib.util.find_spec`
and `__import__`.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.parent.name for p in (REPO / "services").glob("*/pyproject.toml"))
# Top-level packages of the projects under examples/ (the demo): the platform must know none of them.
DEMO_PACKAGES = sorted(p.parent.name for p in (REPO / "examples").glob("*/*/__init__.py"))
DYNAMIC_IMPORTS = {"import_module", "find_spec", "__import__"}


def imported_modules(source: str, filename: str = "<source>") -> Iterator[tuple[int, str]]:
    """(line, module) for every module `source` imports, statically or by a literal name."""
    tree = ast.parse(source, filename)
    constants = {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                 for target in node.targets if isinstance(target, ast.Name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:  # `from flywheel import trainer` imports flywheel.trainer
                yield node.lineno, f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name not in DYNAMIC_IMPORTS:
                continue
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield node.lineno, arg.value
            elif isinstance(arg, ast.Name) and arg.id in constants:
                yield node.lineno, constants[arg.id]


def owner(module: str) -> str | None:
    """`service <name>` for a module of a service's package, `the demo` for the demo's, else None."""
    parts = module.split(".")
    if parts[0] in DEMO_PACKAGES:
        return "the demo"
    if parts[0] == "flywheel" and len(parts) > 1 and parts[1] in SERVICES:
        return f"service {parts[1]}"
    return None


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def crossings(folder: Path, allowed: str | None) -> list[str]:
    found = []
    for path in python_files(folder):
        for line, module in imported_modules(path.read_text(), str(path)):
            who = owner(module)
            if who is not None and who != allowed:
                found.append(f"{path.relative_to(REPO)}:{line} imports {module} ({who})")
    return sorted(set(found))


def test_the_checker_sees_every_kind_of_import() -> None:
    source = '''
import flywheel.trainer.spec
from flywheel.evaluator.store import Label
from flywheel import registry
from payments_demo import project
import importlib, importlib.util
importlib.import_module("flywheel.monitor.analysis")
DEMO = "payments_demo.feature_repo"
importlib.util.find_spec(DEMO)
__import__("flywheel.inference")
from flywheel.common import rpc
from . import sibling
'''
    owners = {owner(module) for _, module in imported_modules(source)} - {None}
    assert owners == {"service trainer", "service evaluator", "service registry", "the demo", "service monitor",
                      "service inference"}
    assert SERVICES and DEMO_PACKAGES == ["payments_demo"]


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service_nor_the_demo(service: str) -> None:
    found = crossings(REPO / "services" / service, allowed=f"service {service}")
    assert not found, "what several services share belongs in libs/:\n" + "\n".join(found)


def test_libs_import_no_service_nor_the_demo() -> None:
    found = crossings(REPO / "libs", allowed=None)
    assert not found, "libs/ must not know the services or the demo:\n" + "\n".join(found)


def test_connection_pools_come_from_the_shared_db_module() -> None:
    """One pool for the platform: `flywheel.common.db`'s (it hands out the most recently used connection)."""
    shared = REPO / "libs" / "flywheel" / "common" / "db.py"
    found = [f"{path.relative_to(REPO)}:{n}" for folder in ("libs", "services")
             for path in sorted((REPO / folder).rglob("*.py")) if "__pycache__" not in path.parts and path != shared
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"\b(Async)?(Connection|Null)Pool\b", line)]
    assert not found, f"use flywheel.common.db.Database or MruConnectionPool: {found}"


def _distribution(pyproject: Path) -> tuple[str, list[str]]:
    """A pyproject's distribution name and the names of what it depends on (extras and versions dropped)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    names = [re.split(r"[\s\[<>=!~;]", dep, maxsplit=1)[0].lower() for dep in project.get("dependencies", [])]
    return project["name"].lower(), names


def test_no_distribution_of_the_platform_depends_on_a_service_or_the_demo() -> None:
    services = {_distribution(REPO / "services" / s / "pyproject.toml")[0] for s in SERVICES}
    demos = {_distribution(p)[0] for p in (REPO / "examples").glob("*/pyproject.toml")}
    wrong = []
    for pyproject in [*(REPO / "services").glob("*/pyproject.toml"), *(REPO / "libs").glob("**/pyproject.toml")]:
        name, needs = _distribution(pyproject)
        wrong += [f"{pyproject.relative_to(REPO)}: {name} depends on {dep}" for dep in needs
                  if (dep in services and dep != name) or dep in demos]
    assert not wrong, "\n".join(wrong)


# As if these were not installed: importing them raises ModuleNotFoundError. (Not `sys.modules[name] = None`:
# libraries such as scipy take a name in sys.modules for an imported module.)
BLOCK = """import sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {names!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)")
sys.meta_path.insert(0, NotInstalled())
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_the_predictive_core_needs_neither_torch_nor_pandas() -> None:
    code = BLOCK.format(names=["torch", "pandas"]) + (
        "import flywheel.predictive, flywheel.predictive.spec, flywheel.predictive.metrics\n"
        "import flywheel.predictive.encoding, flywheel.predictive.artifact\n"
        "try:\n    import flywheel.predictive.scoring\nexcept ImportError:\n    print('scoring needs torch')\n")
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "scoring needs torch"


def test_the_monitor_runs_without_torch() -> None:
    assert "torch" not in _distribution(REPO / "services" / "monitor" / "pyproject.toml")[1]
    code = BLOCK.format(names=["torch"]) + (
        "import flywheel.monitor.main, flywheel.monitor.analysis, flywheel.monitor.reference\n"
        "from flywheel.predictive.artifact import InputSchema, write_artifact\n"
        "data = write_artifact(name='m', schema=InputSchema(['x'], []), model_pt=b'', threshold=0.5,\n"
        "                      profile={'label_rate': 0.1})\n"
        "ref = flywheel.monitor.analysis.read_reference(data)\n"
        "print(ref.numeric, ref.label_rate)\n")
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "['x'] 0.1"


def test_the_review_app_runs_without_torch_numpy_or_pandas() -> None:
    """A small web process: not even its Parquet export pulls in numpy or pandas (pyarrow does not need them)."""
    names = _distribution(REPO / "services" / "review" / "pyproject.toml")[1]
    assert not {"torch", "pandas", "numpy"} & set(names)
    code = BLOCK.format(names=["torch", "pandas", "numpy"]) + (
        "import asyncio, io\n"
        "import flywheel.review.main\n"
        "from flywheel.review.export import parquet\n"
        "async def rows():\n"
        "    yield {'decision_id': 'd', 'label_flag': True, 'entity_keys': {'t': '1'}, 'content': {}}\n"
        "data = asyncio.run(parquet(rows())).read()\n"
        "print(data[:4], data[-4:])\n")
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "b'PAR1' b'PAR1'"
