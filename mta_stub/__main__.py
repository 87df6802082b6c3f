"""Runs the MTA stub: `python -m mta_stub --help`."""

from __future__ import annotations

import sys

from grpc_common import serving
from mta_stub.config import Settings
from mta_stub.server import create_app
from mta_stub.spool import SpoolError


def main() -> int:
    settings = Settings.parse()
    return serving.run(settings, lambda: create_app(settings), errors=(SpoolError,))


if __name__ == "__main__":
    sys.exit(main())
