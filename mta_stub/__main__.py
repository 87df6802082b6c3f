"""Runs the MTA stub: `python -m mta_stub --help`."""

from __future__ import annotations

import sys

from grpc_common import core_logs
from mta_stub.config import Settings


def main() -> int:
    settings = Settings.parse()
    core_logs.quiet_in_json(settings.log_json)
    # Imported once the settings are known: gRPC's core reads its verbosity on import.
    from grpc_common import serving
    from mta_stub.server import create_app
    from mta_stub.spool import SpoolError

    return serving.run(settings, lambda: create_app(settings), errors=(SpoolError,))


if __name__ == "__main__":
    sys.exit(main())
