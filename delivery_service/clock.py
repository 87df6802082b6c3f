"""The service's clock: the times the service writes come from here, passed to SQL as
values (Citus refuses now() where a statement mixes it with columns), so that every
process and every test reads time through one seam."""

from __future__ import annotations

import datetime as dt


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
