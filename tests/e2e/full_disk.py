"""A folder on a tmpfs of its own, small enough that a test fills it for real, then frees it.

The team's rule for "the disk is full" is to fill a disk, not to fake a limit:
``size_capped_folder`` mounts a tmpfs of the given size (root only: ``mount``),
``SizeCappedFolder.fill`` writes a filler file until the kernel answers ENOSPC,
and ``free`` deletes it, as an operator cleaning up would. The tmpfs is
unmounted at teardown whatever happened, lazily if a process still holds it.

Also the processor the tests run in real workers: it records each call (in a
file on an ordinary disk) and holds each document until the test releases it,
so a test fills the disk while a document is in hand.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import sqlalchemy

from tests.e2e.processors import RECORD_ENV, _append, held_until_released

FILLER = ".filler"
_CHUNK = 64 * 1024


class SizeCappedFolder:
    """The root of a mounted tmpfs; ``fill()`` takes every free byte, ``free()`` gives it back."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def free_bytes(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def fill(self) -> None:
        """Write a filler file until the disk refuses one more byte (ENOSPC)."""
        fd = os.open(self.path / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (b"\0" * _CHUNK, b"\0"):  # large writes, then the last bytes
                _write_until_full(fd, chunk)
        finally:
            os.close(fd)
        assert self.free_bytes == 0, f"{self.free_bytes} bytes still free"

    def free(self) -> None:
        (self.path / FILLER).unlink(missing_ok=True)

    def subfolder(self, name: str, owner: str | None = None) -> Path:
        """An empty folder inside, belonging to ``owner`` (a user name) if given."""
        folder = self.path / name
        folder.mkdir()
        if owner is not None:
            shutil.chown(folder, owner, owner)
        return folder


def _write_until_full(fd: int, chunk: bytes) -> None:
    while True:
        try:
            os.write(fd, chunk)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            return


def cannot_mount(reason: str) -> None:
    """Skip: this machine cannot mount a tmpfs; under CI=true that is a failure instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} under CI=true", pytrace=False)
    pytest.skip(reason)


@contextmanager
def size_capped_folder(size_bytes: int) -> Iterator[SizeCappedFolder]:
    """A fresh tmpfs of ``size_bytes``, mounted on a temporary folder; unmounted after."""
    if os.geteuid() != 0:
        cannot_mount("mounting a size-capped tmpfs needs root")
    mount_point = Path(tempfile.mkdtemp(prefix="docqueue-full-"))
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", mount_point],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if mounted.returncode:  # root in a container without CAP_SYS_ADMIN, say
            cannot_mount(f"mount -t tmpfs failed: {mounted.stderr.strip()}")
        try:
            yield SizeCappedFolder(mount_point)
        finally:
            _unmount(mount_point)
    finally:
        mount_point.rmdir()


def _unmount(mount_point: Path) -> None:
    # A process a failed test left behind may still hold a file there: detach the
    # mount anyway (-l), and the kernel frees it once that process lets go.
    if subprocess.run(["umount", mount_point], capture_output=True, timeout=30).returncode:
        subprocess.run(["umount", "-l", mount_point], check=True, capture_output=True, timeout=30)


@pytest.fixture
def capped_folder() -> Iterator[Callable[[int], SizeCappedFolder]]:
    """Mount size-capped tmpfs folders on demand; every one is unmounted at teardown."""
    with ExitStack() as mounts:
        yield lambda size_bytes: mounts.enter_context(size_capped_folder(size_bytes))


# -- what the tests look at --------------------------------------------------------

ROW_TABLES = ("documents", "document_contents", "queue_items")


def row_counts(database_url: str) -> dict[str, int]:
    """Rows of the tables an upload writes, read straight from the database (reads
    still work on a full disk)."""
    engine = sqlalchemy.create_engine(
        database_url.replace("postgresql://", "postgresql+psycopg://")
    )
    try:
        with engine.connect() as connection:
            return {
                table: connection.scalar(sqlalchemy.text(f"SELECT count(*) FROM {table}"))
                for table in ROW_TABLES
            }
    finally:
        engine.dispose()


def held_and_recorded(content: bytes, filename: str, content_type: str) -> dict:
    """Records the call (one line per run, on an ordinary disk), then works until the
    test releases it (``held_until_released``); its text is the whole document."""
    _append(os.environ[RECORD_ENV], filename)
    return held_until_released(content, filename, content_type)
