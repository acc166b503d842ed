"""The fork server's folder in TMPDIR, removed even after its process was SIGKILLed.

multiprocessing puts the fork server's socket in a folder of the process that
started it (``pymp-*`` in TMPDIR), removed when that process exits normally. A
worker killed by SIGKILL (the OOM killer, gunicorn's timeout, an operator) never
removed its own, so TMPDIR gained a folder per killed worker, for ever.

So docqueue gives multiprocessing a folder of its own (``docqueue-sandboxes-*``),
holds an exclusive ``flock`` on a file in it for as long as the process lives
(the kernel releases it however the process ends), and the next process to start
a fork server removes every such folder whose lock it can take: its owner is dead.
"""

from __future__ import annotations

import fcntl
import multiprocessing.process
import multiprocessing.util
import os
import shutil
import tempfile
from contextlib import suppress

PREFIX = "docqueue-sandboxes-"
# Made under this name and renamed once locked, so no folder of PREFIX is ever seen
# unlocked while its owner lives.
_UNLOCKED_PREFIX = ".docqueue-sandboxes-starting-"
LOCK_FILE = "owner.lock"
# The exit priority multiprocessing gives its own temporary folder's removal: after
# the fork server and the other finalizers that may still use the folder.
_REMOVED_LAST = -100

_lock_fd: int | None = None


def own_fork_server_folder() -> None:
    """Make this process's folder for multiprocessing (once), removing those of dead
    processes first. Call before starting the fork server."""
    global _lock_fd
    config = multiprocessing.process.current_process()._config  # type: ignore[attr-defined]
    if config.get("tempdir") is not None:
        return  # made already
    remove_folders_of_dead_processes()
    starting = tempfile.mkdtemp(prefix=_UNLOCKED_PREFIX)
    fd = os.open(os.path.join(starting, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    folder = os.path.join(os.path.dirname(starting), PREFIX + starting[-8:])
    os.rename(starting, folder)
    _lock_fd = fd
    multiprocessing.util.Finalize(
        None,
        shutil.rmtree,
        args=(folder,),
        kwargs={"ignore_errors": True},
        exitpriority=_REMOVED_LAST,
    )
    config["tempdir"] = folder


def remove_folders_of_dead_processes() -> None:
    """Remove the folders of PREFIX in TMPDIR whose owner's lock is free. Never raises."""
    try:
        entries = list(os.scandir(tempfile.gettempdir()))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(PREFIX) and entry.is_dir(follow_symlinks=False):
            with suppress(OSError):
                _remove_if_unlocked(entry.path)


def _remove_if_unlocked(folder: str) -> None:
    fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: its owner lives
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(fd)


def _forget_inherited_folder() -> None:
    """In a forked copy of this process: the parent's folder is the parent's.

    The copy makes its own with its first fork server; its copy of the lock's
    descriptor is closed, so the lock says whether the parent lives.
    """
    global _lock_fd
    if _lock_fd is not None:
        os.close(_lock_fd)
        _lock_fd = None
        multiprocessing.process.current_process()._config.pop("tempdir", None)  # type: ignore[attr-defined]


os.register_at_fork(after_in_child=_forget_inherited_folder)
