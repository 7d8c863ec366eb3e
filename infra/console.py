"""The rich Console every streamrec command prints through: tables stay readable in a log file.

Written to a terminal, rich fits output to the terminal's width. Written anywhere else (a pipe,
a log file, CI) it falls back to 80 columns, and a table wider than that squeezes its columns
until each cell is an ellipsis: `streamrec train > train.log` logged its metrics as columns of
'…'. Off a terminal this console prints each table at its natural width instead, however wide,
and text unwrapped (a viewer wraps it; a path or URL folded at column 80 could not be copied);
rules keep the console's width.
"""

from __future__ import annotations

import threading
from typing import Any

from rich.console import Console
from rich.table import Table

WIDEST_TABLE = 1000  # characters: the natural width of a table is measured within this


class StreamrecConsole(Console):
    """A rich Console that, off a terminal, widens itself for each table wider than it."""

    _widen_lock = threading.Lock()  # one print at a time changes and restores the width

    def print(self, *objects: Any, **options: Any) -> None:
        """``Console.print``; off a terminal a table is printed at its natural width and text is
        not wrapped."""
        if self.is_terminal:
            super().print(*objects, **options)
            return
        options.setdefault("soft_wrap", True)
        unbounded = self.options.update_width(WIDEST_TABLE)
        tables = [obj for obj in objects if isinstance(obj, Table)]
        needed = max((self.measure(table, options=unbounded).maximum for table in tables), default=0)
        if needed <= self.width:
            super().print(*objects, **options)
            return
        with self._widen_lock:
            width = self._width
            self.width = needed
            try:
                super().print(*objects, **options)
            finally:
                self._width = width


def make_console(*, stderr: bool = False, highlight: bool = True, soft_wrap: bool = False) -> Console:
    """The console of a command: stdout (``stderr``: stderr), as ``rich.console.Console`` with
    the same options, whose tables are never cut to ellipses when the output is not a terminal."""
    return StreamrecConsole(stderr=stderr, highlight=highlight, soft_wrap=soft_wrap)
