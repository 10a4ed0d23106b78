"""Progress bars of the `cadyq` command: tqdm on stderr, shown only when stderr is a terminal."""
from __future__ import annotations

import os
import sys

FALLBACK_SIZE = (80, 24)  # columns, rows


def bar(**kwargs):
    """tqdm(**kwargs) on stderr; none where stderr is not a terminal (a log gets result lines, not redraws). A
    terminal that reports no size (0 x 0: a pseudo-terminal nobody sized, as some IDE consoles, `docker exec -t`
    and script(1) give) would make tqdm draw nothing at all; it gets 80 x 24 instead."""
    from tqdm import tqdm

    return tqdm(file=sys.stderr, disable=kwargs.pop("disable", None), **_size_if_unknown(), **kwargs)


def _size_if_unknown() -> dict:
    try:
        columns, rows = os.get_terminal_size(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # no file descriptor, or not a terminal
        return {}
    if columns and rows:
        return {}
    return {"ncols": columns or FALLBACK_SIZE[0], "nrows": rows or FALLBACK_SIZE[1]}
