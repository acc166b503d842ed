"""``docqueue import``: the files of some folders, submitted as uploads are (SPEC §7).

Each file passes the checks of an upload (``uploads.check_file``) and is stored
by ``DocumentQueueService.submit`` like one, but many files share a transaction:
a batch holds up to ``BATCH_FILES`` files or ``BATCH_BYTES`` bytes, so ten
thousand small files cost fifty commits, not ten thousand. What a batch commits
stays committed whatever happens after it, and importing the same paths again is
safe: the files stored already come back as duplicates.

Source files are only read. Anything but a regular file (a FIFO, a socket, a
device) is refused before it is opened, and files are opened read-only and
non-blocking, so one swapped for a FIFO in between cannot hang the import.

``--watch`` then follows the paths with an inotify watcher (watchfiles) and
imports a new or changed file once its size and mtime have held still for
``SETTLE_SECONDS``, so a file still being written is imported once, whole (the
first pass waits so for the files it finds still changing). inotify watches
inodes: a watched path removed or replaced is watched again once it is back, and
new folders past the kernel's limit on watches (fs.inotify.max_user_watches) end
the watch with a message rather than be missed without a word.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from .database import describe_outage, is_outage
from .printable import printable
from .queue.submissions import NewDocument
from .uploads import check_file, store_uploads

# A batch is stored when it holds this many files or bytes, whichever comes first:
# large enough that commits are rare, small enough that a PostgreSQL statement
# (the whole batch travels in one) stays a few megabytes.
BATCH_FILES = 200
BATCH_BYTES = 32 * 1024 * 1024
# A watched file is imported once its size and mtime have not changed for this long.
SETTLE_SECONDS = 1.0
# How often the watcher wakes up to look at files that are settling, in milliseconds.
_WATCH_TICK_MS = 200
# Names that downloads, editors and copy tools give files still being written.
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", "~")
_READ_ONLY = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC

# (size, mtime in nanoseconds): a file whose signature holds still has stopped changing.
Signature = tuple[int, int]


class Refused(Exception):
    """A file that cannot be imported; the message says why."""


@dataclass
class ImportCounts:
    """The summary line of SPEC §7: counts over the whole run."""

    imported: int = 0
    duplicates: int = 0
    rejected: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class ImportResult:
    counts: ImportCounts
    # Why the import stopped before its end (a database outage); None when it did not.
    stopped_by: str | None = None
    # SIGINT or SIGTERM ended an import that does not watch, before its end.
    interrupted: bool = False
    # Why the watch stopped before SIGINT or SIGTERM (a folder it could not watch).
    watch_lost: str | None = None


# -- finding the files ------------------------------------------------------------


def is_ignored_name(name: str) -> bool:
    """Hidden entries and files still being written, which a folder import passes over.

    A path named on the command line is imported whatever its name.
    """
    return name.startswith(".") or name.endswith(PARTIAL_SUFFIXES)


@dataclass
class Listing:
    """The files found under the paths, and what was passed over on the way."""

    files: list[Path] = field(default_factory=list)
    unreadable_folders: list[tuple[Path, str]] = field(default_factory=list)
    skipped_folders: int = 0
    skipped_names: int = 0

    def unreadable(self, error: OSError) -> None:
        self.unreadable_folders.append((Path(error.filename), f"unreadable: {error.strerror}"))


def list_files(paths: Sequence[Path], recursive: bool) -> Listing:
    """Every file to import, in a stable order; folders are read, files taken as named.

    Symbolic links to files are followed (a link's target is imported under the
    link's name); links to folders are not, so an import never loops or leaves
    the tree it was given. Entries that are not regular files are listed too:
    reading them refuses them, with the reason.
    """
    listing = Listing()
    for path in paths:
        if not path.is_dir():
            listing.files.append(path)
        elif recursive:
            _walk(path, listing)
        else:
            _scan(path, listing)
    return listing


def _walk(folder: Path, listing: Listing) -> None:
    for parent, folders, names in os.walk(folder, onerror=listing.unreadable):
        kept = sorted(name for name in folders if not is_ignored_name(name))
        listing.skipped_names += len(folders) - len(kept)
        folders[:] = kept  # os.walk descends into these only
        _take(Path(parent), names, listing)


def _scan(folder: Path, listing: Listing) -> None:
    names = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir():
                    listing.skipped_folders += 1
                else:
                    names.append(entry.name)
    except OSError as exc:
        listing.unreadable(exc)
    _take(folder, names, listing)


def _take(folder: Path, names: Iterable[str], listing: Listing) -> None:
    for name in sorted(names):
        if is_ignored_name(name):
            listing.skipped_names += 1
        else:
            listing.files.append(folder / name)


# -- reading one file -------------------------------------------------------------


def read_source(
    path: Path, priority: int, callback_url: str | None
) -> tuple[NewDocument, Signature]:
    """The checked document of the file at ``path`` and the file's signature when read.

    Raises ``Refused`` with the reason: not a regular file, vanished, unreadable,
    or refused by the checks of an upload (empty, too large, unsupported type).
    """
    try:
        _require_regular_file(os.stat(path).st_mode)  # before opening a device or a FIFO
        with open(os.open(path, _READ_ONLY), "rb") as source:
            status = os.fstat(source.fileno())
            _require_regular_file(status.st_mode)  # in case it was swapped since
            document = check_file(path.name, source, priority, callback_url)
    except FileNotFoundError:
        raise Refused(_missing_reason(path)) from None
    except OSError as exc:
        raise Refused(f"unreadable: {exc.strerror or exc}") from None
    except HTTPException as exc:
        raise Refused(exc.description) from None
    return document, (status.st_size, status.st_mtime_ns)


_SPECIAL_FILES = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _require_regular_file(mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "a special file")
    raise Refused(f"not a regular file ({kind})")


def _missing_reason(path: Path) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        return "vanished before it could be read"
    return f"unreadable: a symbolic link to {target}, which does not exist"


# -- telling the user -------------------------------------------------------------


class PlainReport:
    """Progress as plain lines on stderr: one per refused file, nothing per stored one."""

    def begin(self, total: int) -> None:
        pass

    def advance(self) -> None:
        pass

    def end(self) -> None:
        pass

    def say(self, message: str) -> None:
        click.echo(printable(message), err=True)


class BarReport(PlainReport):
    """A progress bar on stderr (a terminal), with the refused files printed above it."""

    def __init__(self) -> None:
        self._progress: Any = None
        self._task: Any = None

    def begin(self, total: int) -> None:
        # Imported here: rich is needed only on a terminal.
        from rich.console import Console
        from rich.progress import MofNCompleteColumn, Progress

        self._progress = Progress(
            *Progress.get_default_columns(), MofNCompleteColumn(), console=Console(stderr=True)
        )
        self._task = self._progress.add_task("importing", total=total)
        self._progress.start()

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def end(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def say(self, message: str) -> None:
        if self._progress is None:
            super().say(message)
        else:
            self._progress.console.print(
                printable(message), markup=False, highlight=False, soft_wrap=True
            )


def make_report() -> PlainReport:
    return BarReport() if sys.stderr.isatty() else PlainReport()


# -- importing --------------------------------------------------------------------


class Importer:
    """Reads files and stores them in batches, counting what became of each."""

    def __init__(self, priority: int, callback_url: str | None, report: PlainReport) -> None:
        self.priority = priority
        self.callback_url = callback_url
        self.report = report
        self.counts = ImportCounts()
        self.name_each = False  # say what became of each file (while watching)
        # The signature of each file when it was last read, so a watched file whose
        # events outlive its import is not imported again.
        self.signatures: dict[Path, Signature] = {}
        self._batch: list[NewDocument] = []
        self._batch_paths: list[Path] = []
        self._batch_bytes = 0

    def import_all(self, paths: Iterable[Path], stop: threading.Event | None = None) -> None:
        for path in paths:
            if stop is not None and stop.is_set():
                break
            self.add(path)
        self.flush()

    def add(self, path: Path) -> None:
        """Read one file into the batch (or refuse it); a full batch is stored."""
        self.report.advance()
        try:
            document, signature = read_source(path, self.priority, self.callback_url)
        except Refused as refused:
            self.refuse(path, str(refused))
            return
        self.signatures[path.absolute()] = signature
        size = len(document.content)
        if self._batch and self._batch_bytes + size > BATCH_BYTES:
            self.flush()
        self._batch.append(document)
        self._batch_paths.append(path)
        self._batch_bytes += size
        if len(self._batch) >= BATCH_FILES:
            self.flush()

    def refuse(self, path: Path, reason: str) -> None:
        self.counts.rejected += 1
        self.report.say(f"refused {path}: {reason}")

    def flush(self) -> None:
        """Store the batch in one transaction, as an upload of that many files is."""
        if not self._batch:
            return
        submissions = store_uploads(self._batch)
        for path, submission in zip(self._batch_paths, submissions, strict=True):
            if submission.created:
                self.counts.imported += 1
            else:
                self.counts.duplicates += 1
            if self.name_each:
                outcome = "imported" if submission.created else "duplicate of a stored document:"
                self.report.say(f"{outcome} {path}")
        self._batch, self._batch_paths, self._batch_bytes = [], [], 0


def import_paths(
    paths: Sequence[Path],
    recursive: bool,
    priority: int,
    callback_url: str | None,
    watch: bool,
) -> ImportResult:
    """Import every file of ``paths``, then (``watch``) new ones until SIGINT or SIGTERM,
    which end an import that does not watch between two files.

    A database outage stops the import; the result says so, and its counts
    cover what was committed before it.
    """
    report = make_report()
    importer = Importer(priority, callback_url, report)
    try:
        if watch:
            _import_and_watch(importer, paths, recursive)
        else:
            # A signal ends the import between files, the batch in hand stored: a
            # KeyboardInterrupt would drop it and the summary with it.
            with stop_on_signals() as stop:
                _import_once(importer, paths, recursive, stop)
            if stop.is_set():
                return ImportResult(importer.counts, interrupted=True)
    except SQLAlchemyError as exc:
        if not is_outage(exc):
            raise
        return ImportResult(importer.counts, stopped_by=describe_outage(exc))
    except WatchLost as lost:
        return ImportResult(importer.counts, watch_lost=str(lost))
    finally:
        report.end()
    return ImportResult(importer.counts)


def _import_once(
    importer: Importer,
    paths: Sequence[Path],
    recursive: bool,
    stop: threading.Event | None = None,
    settling: SettlingFiles | None = None,
) -> set[Path]:
    """Import the files of ``paths``; those still changing go to ``settling`` if given
    (a watch imports them once they settle: read now, they would be read half-written),
    and are returned."""
    listing = list_files(paths, recursive)
    _say_skipped(importer.report, listing)
    for folder, reason in listing.unreadable_folders:
        importer.refuse(folder, reason)
    files = listing.files
    changing = set()
    if settling is not None:
        changing = {path for path in files if settling.still_changing(path)}
        for path in changing:
            settling.changed(path)
        files = [path for path in files if path not in changing]
    importer.report.begin(len(files))
    importer.import_all(files, stop)
    importer.report.end()
    return changing


def _say_skipped(report: PlainReport, listing: Listing) -> None:
    if listing.skipped_folders:
        report.say(
            f"skipped {listing.skipped_folders} subfolder(s): add --recursive to import them"
        )
    if listing.skipped_names:
        report.say(
            f"skipped {listing.skipped_names} hidden or partial name(s) "
            f"(dotfiles, {', '.join('*' + suffix for suffix in PARTIAL_SUFFIXES)})"
        )


# -- watching ---------------------------------------------------------------------


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while in the block (the handlers are put back after)."""
    stop = threading.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in signals}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class SettlingFiles:
    """Files seen changing; each is ready once its signature has held still long enough."""

    def __init__(self, settle_seconds: float = SETTLE_SECONDS) -> None:
        self.settle_seconds = settle_seconds
        # path -> (signature last seen, or None before the first look; when it last changed)
        self._files: dict[Path, tuple[Signature | None, float]] = {}

    def changed(self, path: Path) -> None:
        self._files[path] = (None, time.monotonic())

    def holds_any(self, paths: Iterable[Path]) -> bool:
        return any(path in self._files for path in paths)

    def still_changing(self, path: Path) -> bool:
        """True when the file at ``path`` was modified less than ``settle_seconds`` ago."""
        try:
            modified = os.stat(path).st_mtime_ns
        except OSError:
            return False  # reading it says why
        return time.time_ns() - modified < self.settle_seconds * 1e9

    def settled(self) -> tuple[list[tuple[Path, Signature]], list[Path]]:
        """The files that have not changed for ``settle_seconds``, and those gone (or
        no longer files), taken off the list."""
        now = time.monotonic()
        ready, gone = [], []
        for path, (seen, since) in list(self._files.items()):
            current = _signature(path)
            if current is None:
                del self._files[path]
                gone.append(path)
            elif current != seen:
                self._files[path] = (current, now)
            elif now - since >= self.settle_seconds:
                del self._files[path]
                ready.append((path, current))
        return sorted(ready), gone


def _signature(path: Path) -> Signature | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    if stat.S_ISDIR(status.st_mode):
        return None
    return status.st_size, status.st_mtime_ns


def _identity(path: Path) -> tuple[int, int] | None:
    """The device and inode of the file or folder at ``path``, None when nothing is there."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _folders(folder: Path) -> Iterator[Path]:
    """``folder`` and the folders of its tree that an import takes."""
    for parent, folders, _ in os.walk(folder):
        folders[:] = [name for name in folders if not is_ignored_name(name)]
        yield Path(parent)


_IN_DELETE_SELF = 0x400  # any event will do: the watch is removed at once


@contextmanager
def _watch_probe() -> Iterator[Callable[[Path], int]]:
    """A function that tells whether inotify would watch a folder now: 0, or the errno.

    It adds a watch of its own and removes it: watchfiles does not say when the
    kernel refused one of its watches.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
    descriptor = libc.inotify_init1(os.O_CLOEXEC)

    def probe(folder: Path) -> int:
        if descriptor < 0:  # no inotify instance left to ask with: cannot tell
            return 0
        watch = libc.inotify_add_watch(descriptor, os.fsencode(folder), _IN_DELETE_SELF)
        if watch < 0:
            return ctypes.get_errno()
        libc.inotify_rm_watch(descriptor, watch)
        return 0

    try:
        yield probe
    finally:
        if descriptor >= 0:
            os.close(descriptor)


class Watch:
    """What the watcher reports, narrowed to the files an import of ``roots`` takes."""

    def __init__(self, roots: Sequence[Path], recursive: bool) -> None:
        self.roots = [root.absolute() for root in roots]
        self.recursive = recursive
        self.settling = SettlingFiles()
        # Each root's identity when the watcher started: inotify watches an inode, so a
        # root removed (or renamed) and made again is not watched until watched again.
        self.identities: dict[Path, tuple[int, int] | None] = {}
        # Folders that appeared in the tree (--recursive), for unwatchable() to check.
        self.new_folders: list[Path] = []

    def start(self) -> list[Path]:
        """The roots there now, to give a new watcher; their identities are noted."""
        self.identities = {root: _identity(root) for root in self.roots}
        return [root for root, identity in self.identities.items() if identity is not None]

    def roots_back(self, report: PlainReport) -> list[Path]:
        """The roots there again, or anew, since the watcher started (said once gone)."""
        back = []
        for root, identity in self.identities.items():
            current = _identity(root)
            if current == identity:
                continue
            if current is None:
                report.say(f"{root} is gone (removed or renamed): watching for it to come back")
                self.identities[root] = None
            else:
                back.append(root)
        return back

    def catch_up(self, root: Path) -> None:
        """Look at every file of a root watched again: what it held was never reported."""
        for path in list_files([root], self.recursive).files:
            self.settling.changed(path)

    def note(self, changes: Iterable[tuple[Any, str]]) -> list[Path]:
        """Take a batch of changes; the new subfolders passed over (no --recursive)."""
        from watchfiles import Change

        # The watcher reports a set: a name deleted and written again in one batch
        # comes as "deleted" and "added" in no particular order. Every event is taken
        # as a change; settled() drops the files that are gone.
        skipped = []
        for change, raw_path in changes:
            path = Path(raw_path)
            if not self.takes(path) or (path.is_symlink() and path.is_dir()):
                continue  # links to folders are not followed, as by list_files
            elif not path.is_dir():
                self.settling.changed(path)
            elif self.recursive:
                # A folder moved in whole brings files no event named.
                for file in list_files([path], recursive=True).files:
                    self.settling.changed(file)
                self.new_folders.extend(_folders(path))
            elif change == Change.added:
                skipped.append(path)
        return skipped

    def unwatchable(self) -> list[tuple[Path, int]]:
        """The new folders (noted since the last call) inotify refuses to watch, with why.

        The watcher adds a watch to each new folder of the tree; past the system's
        limit the kernel refuses it (ENOSPC), and watchfiles says nothing of it: the
        files written there later would be missed without a word.
        """
        folders, self.new_folders = self.new_folders, []
        if not folders:
            return []
        with _watch_probe() as probe:
            errors = {folder: probe(folder) for folder in folders}
        gone = (0, errno.ENOENT, errno.ENOTDIR)  # watched, or no longer there
        return [(folder, error) for folder, error in errors.items() if error not in gone]

    def takes(self, path: Path) -> bool:
        """True when importing the roots would import ``path``."""
        for root in self.roots:
            if path == root:
                return True
            if path.is_relative_to(root):
                parts = path.relative_to(root).parts
                if any(is_ignored_name(part) for part in parts):
                    return False
                return self.recursive or len(parts) == 1
        return False


# What a watcher yields: batches of (change, path).
Changes = Generator[set[tuple[Any, str]], None, None]


class CannotWatch(click.ClickException):
    """The watcher could not start (the system's limit on inotify watches, most often)."""


class WatchLost(Exception):
    """A folder that appeared in the tree could not be watched; the message says why."""


def _start_watcher(watch: Watch, stop: threading.Event) -> tuple[Changes, set[tuple[Any, str]]]:
    """A watcher of the roots there now, running, and its first batch of changes."""
    from watchfiles import watch as watch_changes

    roots = watch.start()
    changes = watch_changes(
        *roots,
        watch_filter=None,  # the import's own rule (Watch.takes) decides
        recursive=watch.recursive,
        stop_event=stop,
        yield_on_timeout=True,
        rust_timeout=_WATCH_TICK_MS,
    )
    try:
        return changes, next(changes, set())
    except OSError as exc:  # raised as the watcher starts
        raise CannotWatch(_why_not_watched(roots, exc)) from None


def _why_not_watched(roots: Sequence[Path], exc: OSError) -> str:
    where = ", ".join(map(str, roots))
    if "watch limit" not in str(exc):
        return f"cannot watch {where}: {exc}"
    return _past_the_limit(where)


def _past_the_limit(where: str) -> str:
    try:
        limit = Path("/proc/sys/fs/inotify/max_user_watches").read_text().strip()
    except OSError:
        limit = "unknown"
    return (
        f"cannot watch {where}: the limit on inotify watches (one per folder, for all "
        f"processes of this user) is reached: fs.inotify.max_user_watches is {limit}; "
        "raise it (sysctl fs.inotify.max_user_watches=1048576) or watch fewer folders"
    )


def _import_and_watch(importer: Importer, paths: Sequence[Path], recursive: bool) -> None:
    # One line per change batch at INFO would drown the lines that matter.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    watch = Watch(paths, recursive)
    with stop_on_signals() as stop:
        # The watcher runs from its first step on: a file written during the first
        # pass is seen, and imported once it settles (if it changed).
        changes, first = _start_watcher(watch, stop)
        watch.note(first)
        changing = _import_once(importer, paths, recursive, stop, watch.settling)
        # The files found still changing are the first pass's too: it ends once they
        # have settled and been imported (or are gone).
        while watch.settling.holds_any(changing) and not stop.is_set():
            _import_settled(importer, watch, next(changes, set()))
        if stop.is_set():
            return
        importer.report.say(f"watching {', '.join(map(str, paths))} (SIGINT or SIGTERM ends)")
        importer.name_each = True
        while changes is not None:
            changes = _follow(importer, watch, changes, stop)


def _follow(
    importer: Importer,
    watch: Watch,
    changes: Changes,
    stop: threading.Event,
) -> Changes | None:
    """Import files as they settle; None once stopped, or a new watcher for roots back."""
    for batch in changes:
        for folder, error in watch.unwatchable():
            if error == errno.ENOSPC:
                # Which new folder inotify refused is not known: the limit stands now.
                raise WatchLost(_past_the_limit(f"every new folder (at {folder})"))
            importer.refuse(folder, f"cannot be watched: {os.strerror(error)}")
        _import_settled(importer, watch, batch)
        back = watch.roots_back(importer.report)
        if back:
            return _watch_again(importer, watch, changes, back, stop)
    return None


def _import_settled(importer: Importer, watch: Watch, batch: set[tuple[Any, str]]) -> None:
    """Note a batch of changes, then import the files that have settled with new bytes."""
    for folder in watch.note(batch):
        # As a folder import says it skipped subfolders: the files a scanner writes
        # into a new one (a folder per month, say) would be missed without a word.
        importer.report.say(f"skipped new subfolder {folder}: add --recursive to import its files")
    ready, gone = watch.settling.settled()
    for path in gone:
        # Kept, the signatures of files deleted after their import (an inbox emptied as
        # it is read) grew a long watch's memory without end. Back with the same bytes,
        # a file is a duplicate, not queued again.
        importer.signatures.pop(path.absolute(), None)
    for path, signature in ready:
        if importer.signatures.get(path.absolute()) != signature:
            importer.add(path)
    importer.flush()


def _watch_again(
    importer: Importer,
    watch: Watch,
    changes: Changes,
    back: list[Path],
    stop: threading.Event,
) -> Changes:
    """A new watcher, on the roots back too; the files they hold already are looked at."""
    try:
        new_changes, first = _start_watcher(watch, stop)
    except CannotWatch as reason:
        importer.report.say(reason.message)
        return changes  # the other roots stay watched; these ones are said not to be
    changes.close()
    watch.note(first)
    for root in back:
        watch.catch_up(root)
        importer.report.say(f"watching {root} again")
    return new_changes
