"""Tables on the terminal or in a pipe: cut to the terminal's width, whole otherwise.

Rich fits a table to its console's width, 80 columns when the output is not a terminal, and cuts the
cells that do not fit (``confid…``). Piped into a file, ``grep`` or a ticket, a cut value is a wrong
value; so a table goes out at its natural width when the output is not a terminal, or with ``--wide``.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

__all__ = ["print_table"]

#: Widest a table is measured at (a cell longer than this is a bug, not data).
_MEASURE_WIDTH = 100_000


def print_table(console: Console, table: Table, *, wide: bool = False) -> None:
    """Print ``table`` on ``console``: fitted to a terminal, at its natural width in a pipe or if ``wide``."""
    if console.is_terminal and not wide:
        console.print(table)
        return
    natural = console.measure(table, options=console.options.update_width(_MEASURE_WIDTH)).maximum
    if natural <= console.width:
        console.print(table)
        return
    Console(
        file=console.file,
        width=natural,
        color_system=console.color_system,  # type: ignore[arg-type]
        highlight=False,
        force_terminal=console.is_terminal,
    ).print(table)
