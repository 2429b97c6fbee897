"""How numbers and times are shown to people (CLI and notebook magics alike)."""

from __future__ import annotations

import datetime as dt


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
