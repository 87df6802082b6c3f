"""What the tools may import of the service, read from the sources (nothing is imported).

The CLI, the benchmark and the dev tools reach the delivery service only through its
public admin surface, `delivery_service.admin`, whose names are guarded here (as
Temporal's SDK guards its public names): a change to them is a change to every tool.
The CLI ships in the wheel, so it never imports what does not: tools, bench, tests.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("campaign_cli", "bench", "tools")
ADMIN = "delivery_service.admin"
# Not in the wheel: the CLI must run without them.
DEV_ONLY = ("tools", "bench", "tests")

# The public names of delivery_service.admin and their parameters, as the tools use them.
ADMIN_SURFACE = {
    "ROLES": None,
    "AdminError": None,
    "OperatorExists": None,
    "DatabaseUnavailable": None,
    "migrate": ["database_url"],
    "create_operator": ["database_url", "name", "roles", "*", "timeout"],
    "revoke_operator": ["database_url", "name", "*", "timeout"],
    "NotCitus": None,
    "distribute": ["database_url"],
    "RECIPIENTS_PER_REQUEST": None,
    "ADDRESS_PATTERN": None,
    "LONG_LABEL_PATTERN": None,
    "LARGEST_DOMAINS": None,
    "statement": ["name"],
}


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in a file, at any depth, `from a import b` as a.b."""
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        # Relative imports stay inside their own package: not what is checked here.
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def sources(*packages: str) -> list[Path]:
    found = sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))
    assert found, f"no sources under {packages}"
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


@pytest.mark.parametrize("path", sources(*TOOLS), ids=lambda p: str(p.relative_to(ROOT)))
def test_tools_reach_the_service_only_through_admin(path: Path) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for line, module in imported_modules(path)
        if within(module, "delivery_service") and not within(module, ADMIN)
    ]
    assert not wrong, f"only {ADMIN} is open to the tools:\n" + "\n".join(wrong)


@pytest.mark.parametrize("path", sources("campaign_cli"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_cli_imports_nothing_outside_the_wheel(path: Path) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for line, module in imported_modules(path)
        if any(within(module, package) for package in DEV_ONLY)
    ]
    assert not wrong, "campaign_cli ships in the wheel, without tools, bench and tests:\n" + (
        "\n".join(wrong)
    )


def public_surface(path: Path) -> dict[str, list[str] | None]:
    """The module's public top-level names (imports aside), with a function's parameters."""
    surface: dict[str, list[str] | None] = {}
    for node in ast.parse(path.read_text("utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            params = [a.arg for a in [*args.posonlyargs, *args.args]]
            if args.vararg is not None:
                params.append(f"*{args.vararg.arg}")
            elif args.kwonlyargs:
                params.append("*")
            params += [a.arg for a in args.kwonlyargs]
            if args.kwarg is not None:
                params.append(f"**{args.kwarg.arg}")
            surface[node.name] = params
        elif isinstance(node, ast.ClassDef):
            surface[node.name] = None
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            surface.update((t.id, None) for t in targets if isinstance(t, ast.Name))
    return {name: value for name, value in surface.items() if not name.startswith("_")}


def test_the_admin_surface_is_guarded() -> None:
    assert public_surface(ROOT / "delivery_service" / "admin.py") == ADMIN_SURFACE


def test_the_checks_see_an_import_they_must_refuse(tmp_path: Path) -> None:
    """The reading itself: each kind of import the checks must catch is seen."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import delivery_service.store\n"
        "from delivery_service import admin, api\n"
        "from delivery_service.domain.lifecycle import Role\n"
        "def later():\n"
        "    from tools import embedded_pg\n"
        "from . import sibling\n",
        "utf-8",
    )
    assert sorted(imported_modules(sample)) == [
        (1, "delivery_service.store"),
        (2, "delivery_service.admin"),
        (2, "delivery_service.api"),
        (3, "delivery_service.domain.lifecycle.Role"),
        (5, "tools.embedded_pg"),
    ]
