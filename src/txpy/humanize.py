"""How numbers and times are shown to people (CLI and notebook magics alike)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence


def size(n: float) -> str:
    """1536 -> '1.5 KB'."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def when(t: float, short: bool = False) -> str:
    """A commit time as local 'YYYY-MM-DD HH:MM:SS' (short: 'MM-DD HH:MM')."""
    return dt.datetime.fromtimestamp(t).strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S")


#: Listings are made for an 80-column terminal or notebook output.
WIDTH = 80


def wrap(words: Sequence[str], lead: str = "", sep: str = "", indent: int = 4,
         width: int = WIDTH) -> list[str]:
    """lead, then words (each but the last followed by sep, e.g. ",") joined by spaces, as
    lines of at most width that break only between words: a name or number is never cut in
    two. Continuation lines are indented; a word wider than a line gets one of its own."""
    tokens = [w + sep for w in words[:-1]] + list(words[-1:])
    lines: list[str] = []
    line = lead
    for token in tokens:
        if not line.strip():
            line += token
        elif len(line) + 1 + len(token) <= width:
            line += " " + token
        else:
            lines.append(line)
            line = " " * indent + token
    return [*lines, line]
