"""Dead processes' metric files, merged into one archive file per kind.

In prometheus-client's multiprocess mode every process keeps its counts in files of
its own (``counter_<pid>.db``, ``histogram_<pid>.db``, 64 KiB or more each), and
nothing removes them when it exits: under gunicorn every reload, crash or
``max_requests`` left two more, and every scrape read them all (measured: 5,000
dead workers, 640 MB and half a second a scrape). gunicorn's master merges them
(``merge_dead_processes`` from its ``child_exit``) into ``counter_archive.db`` and
``histogram_archive.db``: the values of each key added up, in the files' own
format, which MultiProcessCollector reads like any other. prometheus-client
offers no such merge (its maintainers leave it to the server: prometheus/client_python#204).

A scrape must never see a dead process's counts both in the archive and in its own
file (counted twice), nor miss them in both, nor fail on a file removed after it
listed the folder: merges hold the folder's lock file exclusively, scrapes
(``LockedMultiProcessCollector``) hold it shared, and a turnstile lets a waiting
merge in between scrapes that overlap.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import struct
import time
from collections.abc import Iterator
from logging import Logger

from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

LOCK_FILE = "merge.lock"
TURNSTILE = "merge.turnstile"
ARCHIVE = "archive"
# Counts that add up. Gauges are not merged: their modes (min, max, live...) do not.
_MERGED_FILE = re.compile(r"^(counter|histogram)_(\d+)\.db$")
# How long a merge waits for running scrapes before it leaves the files to the next.
LOCK_WAIT_SECONDS = 2.0
# A file's used bytes and padding, before its first value.
_HEADER_SIZE = 8


class LockedMultiProcessCollector(MultiProcessCollector):
    """MultiProcessCollector reading the folder while no merge changes it."""

    def collect(self):
        with _scraping(self._path):
            return self.merge(_sized_files(self._path), accumulate=True)


def _sized_files(folder: str) -> list[str]:
    """The folder's metric files, but for those not sized yet.

    A process makes its file empty, then sizes it: a scrape that read it meanwhile
    failed whole (struct.error, prometheus/client_python#1199). It holds no count yet.
    """
    return _sized_files_among(glob.glob(os.path.join(folder, "*.db")))


def _sized_files_among(paths: list[str]) -> list[str]:
    sized = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):  # a dead process's live gauges
            if os.path.getsize(path) >= _HEADER_SIZE:
                sized.append(path)
    return sized


@contextlib.contextmanager
def _scraping(folder: str) -> Iterator[None]:
    """The folder's lock, shared with other scrapes, once no merge waits for it.

    A merge waiting for the lock holds the turnstile: without it, scrapes that
    overlap (several threads, workers or Prometheus servers) kept the lock shared
    without a break and the merge waited for ever.
    """
    with _opened(folder, TURNSTILE) as turnstile, _opened(folder, LOCK_FILE) as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)  # waits while a merge is due
        fcntl.flock(turnstile, fcntl.LOCK_UN)
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield


@contextlib.contextmanager
def _merging(folder: str) -> Iterator[None]:
    """The turnstile and the lock, exclusively: BlockingIOError if the scrapes
    running now have not ended within LOCK_WAIT_SECONDS."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    with _opened(folder, TURNSTILE) as turnstile, _opened(folder, LOCK_FILE) as lock:
        _flock_by(turnstile, deadline)
        _flock_by(lock, deadline)
        yield


@contextlib.contextmanager
def _opened(folder: str, name: str) -> Iterator[int]:
    fd = os.open(os.path.join(folder, name), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)  # releases its lock


def _flock_by(fd: int, deadline: float) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)


def merge_dead_processes(folder: str, log: Logger) -> None:
    """Merge the counter and histogram files of every process that is gone.

    Never raises (it runs in gunicorn's master, which an exception would stop):
    files it cannot merge now (scrapes hold the lock, no room for the archive)
    stay as they are, counted, and a later call merges them.
    """
    try:
        with _merging(folder):
            for kind, paths in _files_of_dead_processes(folder).items():
                _merge_into_archive(folder, kind, paths)
    except BlockingIOError:
        log.warning(
            "Metrics: scrapes held %s for %s s; dead workers' files are merged later",
            folder,
            LOCK_WAIT_SECONDS,
        )
    except Exception as error:  # the master must go on
        log.error("Metrics: could not merge dead workers' files in %s: %s", folder, error)


def _files_of_dead_processes(folder: str) -> dict[str, list[str]]:
    """Counter and histogram files by kind, of processes no longer running.

    gunicorn's master calls this after reaping the worker, and forks no new one
    meanwhile, so a pid found dead here is not given to a new worker of this
    master before its files are gone.
    """
    dead: dict[str, list[str]] = {}
    for name in sorted(os.listdir(folder)):
        match = _MERGED_FILE.match(name)
        if match and not _running(int(match.group(2))):
            dead.setdefault(match.group(1), []).append(os.path.join(folder, name))
    return dead


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _merge_into_archive(folder: str, kind: str, paths: list[str]) -> None:
    """Add the files' values into the kind's archive, then remove the files.

    The new archive is written beside (a name no scrape reads) and renamed over the
    old one. Written with plain writes, not through a mapping as prometheus-client
    does: on a full disk that is an OSError here, not SIGBUS killing the master.
    """
    archive = os.path.join(folder, f"{kind}_{ARCHIVE}.db")
    totals: dict[str, float] = {}
    for path in _sized_files_among([archive, *paths]):
        for key, value, _timestamp, _position in MmapedDict.read_all_values_from_file(path):
            totals[key] = totals.get(key, 0.0) + value
    new = archive + ".new"
    try:
        with open(new, "wb") as file:
            file.write(_encode(totals))
        os.replace(new, archive)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(new)
        raise
    for path in paths:
        os.unlink(path)


def _encode(values: dict[str, float]) -> bytes:
    """MmapedDict's format: the bytes used, 4 bytes of padding, then per key its
    length, the key padded to 8 bytes, its value and a timestamp (unused here)."""
    data = bytearray(_HEADER_SIZE)
    for key, value in values.items():
        encoded = key.encode("utf-8")
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        data += struct.pack(f"i{len(padded)}sdd", len(encoded), padded, value, 0.0)
    struct.pack_into("i", data, 0, len(data))
    return bytes(data)
