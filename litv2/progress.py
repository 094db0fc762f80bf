"""A count on one line of stderr that rewrites itself: long loops (a latency table's parts,
a check's or a runtime comparison's measurements) say how far they are, and the line ends
when the count is complete."""
from __future__ import annotations

import sys


def show_count(label: str, done: int, total: int, detail: str = "") -> None:
    """``  LABEL DONE/TOTAL (DETAIL)``, over the previous count; a newline after the last."""
    text = f"\r  {label} {done}/{total}" + (f" ({detail})" if detail else "")
    print(text, end="" if done < total else "\n", file=sys.stderr, flush=True)
