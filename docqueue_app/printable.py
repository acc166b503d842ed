"""Text that came from outside (a file name, a receiver's status line), made safe to show.

Printed as it is, an ESC sequence drives the terminal of whoever reads it (clears
the screen, retitles the window, hides the lines before it); stored as it is, a
NUL or a lone surrogate is refused by PostgreSQL's text.
"""

from __future__ import annotations

import re

# C0 and C1 controls and DEL, and the lone surrogates that stand for the bytes of a
# name that is not UTF-8 (os.fsdecode).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with its control characters and lone surrogates written as escapes
    (``\\x1b``, ``\\udcff``)."""
    return _UNPRINTABLE.sub(lambda match: repr(match.group())[1:-1], text)
