"""`python -m delivery_service` serves. Admin commands, each through delivery_service.admin:
`... create-operator NAME --role ROLE` adds an operator, `... migrate` brings the schema up
to date, `... distribute` places the tables on a Citus coordinator (docs/scaling.md)."""

from __future__ import annotations

import asyncio
import os
import sys

from delivery_service.config import Settings
from grpc_common import core_logs
from grpc_common.settings import Parser


def _database_url_argument(p: Parser) -> None:
    p.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", ""),
        help="PostgreSQL URL (env DATABASE_URL)",
    )


def _database_url(p: Parser, given: str) -> str:
    if not given:
        p.error("--database-url or DATABASE_URL is required")
    return given


def schema_command(name: str, argv: list[str]) -> int:
    """`migrate` or `distribute`: one schema step on the database, then what it did."""
    from delivery_service import admin

    what = {
        "migrate": "Applies the migrations the database lacks.",
        "distribute": "On a Citus coordinator: migrates, then places every table.",
    }
    p = Parser(prog=f"python -m delivery_service {name}", description=what[name])
    _database_url_argument(p)
    url = _database_url(p, p.parse_args(argv).database_url)
    try:
        done = admin.migrate(url) if name == "migrate" else admin.distribute(url)
    except admin.AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{name}: {', '.join(done) if done else 'nothing to do'}")
    return 0


def create_operator(argv: list[str]) -> int:
    # Imported here: serving does not need the admin surface, nor it the server.
    from delivery_service import admin

    p = Parser(
        prog="python -m delivery_service create-operator",
        description="Adds an operator and prints its token, which is shown only this once.",
    )
    p.add_argument("name")
    p.add_argument(
        "--role",
        action="append",
        choices=admin.ROLES,
        default=[],
        dest="roles",
        help="a role the operator holds; repeat for more",
    )
    _database_url_argument(p)
    a = p.parse_args(argv)
    url = _database_url(p, a.database_url)
    try:
        token = asyncio.run(admin.create_operator(url, a.name, a.roles))
    except admin.AdminError as exc:
        # OperatorExists and DatabaseUnavailable say which it was.
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"operator {a.name!r} created with roles {', '.join(a.roles) or '(none)'}.")
    print("Its token, shown only this once:")
    print(token)
    return 0


def main() -> int:
    if sys.argv[1:2] == ["create-operator"]:
        return create_operator(sys.argv[2:])
    if sys.argv[1:2] in (["migrate"], ["distribute"]):
        return schema_command(sys.argv[1], sys.argv[2:])
    settings = Settings.parse()
    core_logs.quiet_in_json(settings.log_json)
    # Imported once the settings are good: --help and a bad flag need neither, and gRPC's
    # core reads its verbosity when it is imported.
    from delivery_service.server import App
    from delivery_service.store.connection import Unavailable
    from grpc_common import serving

    # An unreachable database at start is one log line and exit 1, like a busy port.
    return serving.run(settings, lambda: App(settings), errors=(Unavailable,))


if __name__ == "__main__":
    sys.exit(main())
