"""`python -m delivery_service` serves; `... create-operator NAME --role ROLE` adds an operator."""

from __future__ import annotations

import asyncio
import os
import sys

from delivery_service.config import Settings
from grpc_common import serving
from grpc_common.settings import Parser


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
    p.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", ""),
        help="PostgreSQL URL (env DATABASE_URL)",
    )
    a = p.parse_args(argv)
    if not a.database_url:
        p.error("--database-url or DATABASE_URL is required")
    try:
        token = asyncio.run(admin.create_operator(a.database_url, a.name, a.roles))
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
    settings = Settings.parse()
    # Imported once the settings are good: --help and a bad flag need neither.
    from delivery_service.server import App
    from delivery_service.store.connection import Unavailable

    # An unreachable database at start is one log line and exit 1, like a busy port.
    return serving.run(settings, lambda: App(settings), errors=(Unavailable,))


if __name__ == "__main__":
    sys.exit(main())
