"""JSON syntax checked in a loop, without building values or recursing.

The json module recurses once per level of nesting and gives up (RecursionError)
near 1,000 levels, while the JSON standard sets no limit: a valid document nested
deeper is checked here instead. What it accepts is what ``json.loads`` accepts
(NaN and Infinity, lone surrogates in escapes), at any depth.
"""

from __future__ import annotations

import re

_BLANKS = re.compile(r"[ \t\n\r]*")
# Possessive, so a long string without its closing quote fails without backtracking.
_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+"')
_SCALAR = re.compile(
    r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|true|false|null|NaN|-?Infinity"
)
_CLOSERS = {"[": "]", "{": "}"}


class _Invalid(Exception):
    def __init__(self, expected: str, position: int) -> None:
        super().__init__(f"expecting {expected} (char {position})")


def json_syntax_error(text: str) -> str | None:
    """None when ``text`` is one JSON value, else what is wrong and where."""
    try:
        _check(text)
    except _Invalid as exc:
        return str(exc)
    return None


def _check(text: str) -> None:
    closers: list[str] = []  # the bracket each open array or object awaits
    position = _skip_blanks(text, 0)
    while True:
        position, member_next = _value(text, position, closers)
        if not member_next:
            position, done = _after_value(text, position, closers)
            if done:
                return


def _value(text: str, position: int, closers: list[str]) -> tuple[int, bool]:
    """Read a value, or only the opening of an array or object. Returns the position
    after it, and whether the opened container's first member comes next."""
    opening = text[position : position + 1]
    if opening in _CLOSERS:
        position = _skip_blanks(text, position + 1)
        if text.startswith(_CLOSERS[opening], position):
            return position + 1, False  # empty
        closers.append(_CLOSERS[opening])
        return _member_start(text, position, closers), True
    match = (_STRING if opening == '"' else _SCALAR).match(text, position)
    if match is None:
        raise _Invalid("a value", position)
    return match.end(), False


def _after_value(text: str, position: int, closers: list[str]) -> tuple[int, bool]:
    """Read the closing brackets and the comma after a value. Returns the position of
    the next value, or True once the document is over."""
    while True:
        position = _skip_blanks(text, position)
        if not closers:
            if position != len(text):
                raise _Invalid("the end of the document", position)
            return position, True
        if text.startswith(",", position):
            return _member_start(text, _skip_blanks(text, position + 1), closers), False
        if not text.startswith(closers[-1], position):
            raise _Invalid(f"',' or '{closers[-1]}'", position)
        closers.pop()
        position += 1


def _member_start(text: str, position: int, closers: list[str]) -> int:
    """The position of a member's value: past its name and colon in an object."""
    if closers[-1] == "]":
        return position
    name = _STRING.match(text, position)
    if name is None:
        raise _Invalid("a property name in double quotes", position)
    position = _skip_blanks(text, name.end())
    if not text.startswith(":", position):
        raise _Invalid("':'", position)
    return _skip_blanks(text, position + 1)


def _skip_blanks(text: str, position: int) -> int:
    return _BLANKS.match(text, position).end()
