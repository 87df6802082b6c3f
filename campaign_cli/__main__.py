"""`campaign` (the console script) and `python -m campaign_cli`."""

from __future__ import annotations

from campaign_cli.app import app


def main() -> None:
    app(prog_name="campaign")


if __name__ == "__main__":
    main()
