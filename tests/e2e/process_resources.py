"""What a running process holds, read from /proc: descriptors, threads, child processes,
and its PostgreSQL sessions (matched by the client port of its TCP sockets).

The leak tests (``test_leaks.py``) take a ``Census`` of the same processes after a
first round of work or faults and after the last one: anything that grows with the
rounds grows without bound in a server that runs for months.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psycopg

_SOCKET = re.compile(r"socket:\[(\d+)\]")
_INODE = re.compile(r":\[\d+\]$")


@dataclass(frozen=True)
class Process:
    pid: int
    state: str  # /proc/PID/stat's: R, S, D, Z (a zombie)...


def process_table() -> dict[int, list[Process]]:
    """Parent pid -> its children, for every process of the machine."""
    children: dict[int, list[Process]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        children.setdefault(int(fields[1]), []).append(Process(int(stat.parent.name), fields[0]))
    return children


def descendants(pid: int, table: dict[int, list[Process]] | None = None) -> list[Process]:
    """Every process below ``pid``: its children, theirs, and so on (in ``table``, a
    ``process_table``, or the machine's now)."""
    table = process_table() if table is None else table
    found: list[Process] = []
    below = [pid]
    while below:
        for child in table.get(below.pop(), []):
            found.append(child)
            below.append(child.pid)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def open_descriptors(pid: int) -> list[str]:
    """What each of the process's file descriptors points at."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue  # closed meanwhile
    return targets


def descriptor_kinds(pid: int) -> Counter[str]:
    """How many of the process's descriptors point at each kind of thing: ``socket``,
    ``pipe``, ``anon_inode:[pidfd]``..., or a file's path."""
    return Counter(_INODE.sub("", target) for target in open_descriptors(pid))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def tcp_connections(pid: int) -> list[tuple[int, int]]:
    """(local port, remote port) of each of the process's TCP sockets (IPv4 and IPv6)."""
    inodes = {int(m.group(1)) for t in open_descriptors(pid) if (m := _SOCKET.fullmatch(t))}
    connections = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[9]) in inodes:
                local, remote = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
                connections.append((local, remote))
    return connections


def tcp_client_ports(pid: int) -> set[int]:
    """The local ports of the process's TCP sockets."""
    return {local for local, _ in tcp_connections(pid)}


def postgres_sessions(admin_url: str, database: str) -> list[tuple[int, str, str]]:
    """(client port, application name, state) of every session on ``database``."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT client_port, application_name, state FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return [(port, name or "-", state or "-") for port, name, state in rows]


@dataclass(frozen=True)
class Census:
    """What one process holds at one moment."""

    descriptors: int
    threads: int
    children: int  # every process below it (sandboxes, fork server, resource tracker)
    grandchildren: int  # those below its children (a worker's sandboxes, the fork server's)
    zombies: int
    sessions: Counter[tuple[str, str]]  # (application name, state) -> PostgreSQL sessions
    # Its TCP connections to PostgreSQL, the pool's sockets the server dropped included.
    database_sockets: int
    kinds: Counter[str]  # descriptor_kinds

    @classmethod
    def of(
        cls, pid: int, sessions: list[tuple[int, str, str]] | None = None, database_port: int = 0
    ) -> Census:
        """``sessions`` (``postgres_sessions``) are the database's, on ``database_port``."""
        table = process_table()
        below = descendants(pid, table)
        connections = tcp_connections(pid) if sessions is not None else []
        ports = {local for local, _ in connections}
        kinds = descriptor_kinds(pid)
        return cls(
            descriptors=sum(kinds.values()),
            threads=thread_count(pid),
            children=len(below),
            grandchildren=len(below) - len(table.get(pid, [])),
            zombies=sum(child.state == "Z" for child in below),
            sessions=Counter(
                (name, state) for port, name, state in sessions or [] if port in ports
            ),
            database_sockets=sum(remote == database_port for _, remote in connections),
            kinds=kinds,
        )
