"""A document's bytes handed to psycopg as they are, for an upload's one statement.

psycopg's own binary dumper of ``bytes`` (its C version) copies the value into a
buffer of its own before libpq copies it again into the message it sends: for a
50 MB upload, 50 MB more at the worker's peak, one more per upload in flight.
Bytes wrapped in ``UnchangedBytes`` are passed to libpq without that copy.

This module imports psycopg: only the PostgreSQL path imports it (a server on
SQLite never loads psycopg).
"""

from __future__ import annotations

from psycopg import Connection
from psycopg.adapt import Dumper
from psycopg.pq import Format

# bytea's oid is fixed in PostgreSQL's catalog (pg_type.dat).
_BYTEA_OID = 17


class UnchangedBytes:
    """``content`` to send as a bytea parameter in the binary format, uncopied."""

    __slots__ = ("content",)

    def __init__(self, content: bytes) -> None:
        self.content = content


class _UnchangedBytesDumper(Dumper):
    format = Format.BINARY
    # No oid on the class, so registering it leaves psycopg's bytea dumper by oid (the
    # one COPY and arrays pick) as it was; each instance says bytea.
    oid = 0

    def __init__(self, cls: type, context: object = None) -> None:
        super().__init__(cls, context)
        self.oid = _BYTEA_OID

    def dump(self, obj: UnchangedBytes) -> bytes:
        return obj.content


def send_bytes_unchanged(connection: Connection) -> None:
    """Let ``connection`` take ``UnchangedBytes`` parameters (cheap to repeat: two dict
    entries). On the connection itself: a map it copied from psycopg's global one
    before would not see a dumper registered there."""
    connection.adapters.register_dumper(UnchangedBytes, _UnchangedBytesDumper)
