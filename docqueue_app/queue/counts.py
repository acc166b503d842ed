"""Counting a document's words without holding all of them at once.

SPEC §5: docqueue counts the words of the returned text itself. ``len(text.split())``
built a list of every word: for the largest text (20 million characters, the
extractors' cap) that is 4 million strings, 235 MiB of a worker's memory for an
English text and 600 MiB for one of one-letter words, several times the text.
"""

from __future__ import annotations

# About 1 MiB of ASCII text a slice: its words take a few MiB at most, and each
# slice's copy and list are freed before the next.
SLICE_CHARS = 1 << 20


def count_words(text: str, slice_chars: int = SLICE_CHARS) -> int:
    """``len(text.split())``, counted one slice of ``slice_chars`` characters at a time."""
    words = 0
    for start in range(0, len(text), slice_chars):
        piece = text[start : start + slice_chars]
        words += len(piece.split())
        # A word the slice boundary cuts through was counted in both slices. (split()
        # and isspace() agree on what whitespace is.)
        if start and not piece[0].isspace() and not text[start - 1].isspace():
            words -= 1
    return words
