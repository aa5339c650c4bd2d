"""What every subcommand shares: the usage error (exit 2), info lines, the progress bar, the failures line."""

from __future__ import annotations

import logging
import sys


class UsageError(Exception):
    """Bad command line: exit 2 with the message."""


def note(message: str) -> None:
    """An info line on stderr (a summary, progress, where a file went). -q ("only warnings and errors")
    drops it; warnings (a skipped input) and errors are printed as they are."""
    logging.getLogger("fastclip.cli").info(message)


def progress(total: int | None, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty(), dynamic_ncols=True)


SHOWN_FAILURES = 20  # failed inputs named on the last stderr line; all of them are listed in a file


def report_failures(names: list[str], failed: int, where) -> None:
    """The last stderr line of a run with failures: the first names, and where all of them are listed."""
    shown = ", ".join(names[:SHOWN_FAILURES])
    more = failed - min(len(names), SHOWN_FAILURES)
    extra = f" and {more} more" if more > 0 else ""
    print(f"fastclip: failed: {shown}{extra} (all listed in {where})", file=sys.stderr)
