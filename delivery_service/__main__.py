"""`python -m delivery_service` serves; `... create-operator NAME --role ROLE` adds an operator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from delivery_service import auth, config, migrations, store
from delivery_service.domain.lifecycle import Role
from grpc_common.observability import setup_logging


async def serve(settings: config.Settings) -> None:
    from delivery_service.server import App

    app = App(settings)
    port = await app.start()
    print(f"listening on {settings.host}:{port}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    logging.getLogger(__name__).info("draining")
    await app.stop()


def create_operator(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m delivery_service create-operator")
    p.add_argument("name")
    p.add_argument(
        "--role", action="append", choices=[str(r) for r in Role], default=[], dest="roles"
    )
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    a = p.parse_args(argv)
    if not a.database_url:
        p.error("a database is required: --database-url or DATABASE_URL")
    migrations.apply(a.database_url)

    async def run() -> str:
        db = store.Store(a.database_url, min_size=1, max_size=1)
        await db.open()
        try:
            return await auth.create_operator(db, a.name, [Role(r) for r in a.roles])
        finally:
            await db.close()

    try:
        token = asyncio.run(run())
    except store.Conflict as exc:
        sys.exit(f"error: {exc}")
    print(f"operator {a.name!r} created with roles {', '.join(a.roles) or '(none)'}.")
    print("Its token, shown only this once:")
    print(token)


def main() -> None:
    if sys.argv[1:2] == ["create-operator"]:
        create_operator(sys.argv[2:])
        return
    settings = config.from_args(sys.argv[1:])
    setup_logging(settings.log_level, settings.log_json)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
