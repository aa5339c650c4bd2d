"""What every subcommand shares: the usage error (exit 2) and the progress bar."""

from __future__ import annotations

import sys


class UsageError(Exception):
    """Bad command line: exit 2 with the message."""


def progress(total: int | None, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty(), dynamic_ncols=True)
