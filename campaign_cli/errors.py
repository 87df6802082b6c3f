"""The one kind of error the CLI reports: a status code and a message, shown as one line."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer


class CliError(Exception):
    """A failure to report as `error: CODE: message` with exit code 1, never as a traceback."""

    def __init__(self, code: str | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def line(self) -> str:
        text = f"{self.code}: {self.message}" if self.code else self.message
        # Server and driver messages may span lines; the report stays on one.
        return "error: " + " ".join(text.split())


@contextmanager
def reported() -> Iterator[None]:
    """Turns a CliError raised inside into its line on stderr and exit code 1."""
    try:
        yield
    except CliError as err:
        print(err.line(), file=sys.stderr, flush=True)
        raise typer.Exit(1) from None
