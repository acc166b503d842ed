"""`docqueue import --watch` as folders really fill (SPEC §7), the command in a process.

Each test ends its run of the watcher by writing a last file and waiting for its
import: files are imported in the order they settle, so once the last one is
stored every file written before it has been decided on, and what is missing
then was missed (no timed wait decides it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from flask import Flask

from docqueue_app.models import Document
from tests.e2e.server import wait_for
from tests.test_import import Watcher, count, documents_named, watching


def said(watcher: Watcher, start: str) -> bool:
    return any(line.startswith(start) for line in watcher.stderr_lines)


def summaries(stdout: str) -> list[dict[str, int]]:
    return [json.loads(line) for line in stdout.splitlines()]


def watches_inotify(process: subprocess.Popen) -> bool:
    """True once ``process`` holds an inotify descriptor: its watcher has started."""
    descriptors = Path(f"/proc/{process.pid}/fd")
    for descriptor in descriptors.iterdir():
        try:
            if "inotify" in os.readlink(descriptor):
                return True
        except OSError:  # closed meanwhile
            continue
    return False


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The watched folder, empty."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    return inbox


def write_last(app: Flask, folder: Path) -> None:
    """A last file, once imported, tells that every file written before it was decided on."""
    (folder / "zz-last.txt").write_text(f"the last file written into {folder}\n")
    wait_for(lambda: documents_named(app, "zz-last.txt"), "the last file's import", timeout=30)


def test_files_deleted_and_written_again_at_once_are_each_imported(
    app: Flask, database_url: str, folder: Path
) -> None:
    # A scanner or sync tool that replaces its files by removing and writing them
    # (rm then cp, or a folder emptied and filled again): the watcher reports each
    # name as deleted and added in one batch, in no particular order.
    names = [f"page-{number:02}.txt" for number in range(12)]
    for name in names:
        (folder / name).write_text(f"first version of {name}\n")
        os.utime(folder / name, (time.time() - 3600,) * 2)  # there for an hour

    with watching(database_url, folder) as watcher:
        for name in names:
            (folder / name).unlink()
            (folder / name).write_text(f"second version of {name}\n")
        write_last(app, folder)
        exit_code, stdout = watcher.stop()

    for name in names:
        assert documents_named(app, name) == [
            f"first version of {name}\n".encode(),
            f"second version of {name}\n".encode(),
        ], name
    assert summaries(stdout) == [{"imported": 25, "duplicates": 0, "rejected": 0}]
    assert exit_code == 0


def test_a_file_being_written_when_the_watch_starts_is_imported_once_whole(
    app: Flask, database_url: str, folder: Path
) -> None:
    # The watch restarted (by its supervisor) while a scanner writes into the folder:
    # its first pass meets the file half-written.
    chunk = b"a scanned line\n" * 40
    watcher = Watcher(database_url, folder)
    try:
        with open(folder / "scan.txt", "wb") as scan:

            def write_chunk() -> None:  # one each 0.3 s: it never holds still for 1 s
                scan.write(chunk)
                scan.flush()
                time.sleep(0.3)

            write_chunk()
            while not watches_inotify(watcher.process):
                write_chunk()
            for _ in range(4):  # while the first pass lists the folder
                write_chunk()
        wait_for(lambda: said(watcher, "watching "), "the watch to start")
        write_last(app, folder)
        exit_code, stdout = watcher.stop()
    finally:
        watcher.kill()

    assert documents_named(app, "scan.txt") == [(folder / "scan.txt").read_bytes()]
    assert summaries(stdout) == [{"imported": 2, "duplicates": 0, "rejected": 0}]
    assert exit_code == 0


def test_a_watched_folder_removed_or_renamed_is_watched_again_once_back(
    app: Flask, database_url: str, folder: Path
) -> None:
    # A sync tool that deletes the folder and makes it again, or someone who renames
    # it away and makes a new one of the same name: inotify watched the old folder.

    with watching(database_url, folder) as watcher:
        shutil.rmtree(folder)
        wait_for(lambda: said(watcher, f"{folder} is gone"), "the watcher to see it")
        folder.mkdir()
        (folder / "after-rmdir.txt").write_text("written into the folder made again\n")
        write_last(app, folder)

        folder.rename(folder.with_name("renamed"))
        folder.mkdir()
        (folder / "after-rename.txt").write_text("written into the new folder\n")
        wait_for(lambda: documents_named(app, "after-rename.txt"), "the import", timeout=30)
        exit_code, stdout = watcher.stop()

    assert documents_named(app, "after-rmdir.txt") == [b"written into the folder made again\n"]
    assert summaries(stdout) == [{"imported": 3, "duplicates": 0, "rejected": 0}]
    assert exit_code == 0


def limited_watches(limit: int) -> tuple[str, ...]:
    """A command prefix running a process with at most ``limit`` inotify watches.

    The limit is that of a user namespace of its own, so the machine's is untouched.
    """
    prefix = ("unshare", "--user", "--map-root-user", "sh", "-c")
    script = f'echo {limit} > /proc/sys/user/max_inotify_watches && exec "$0" "$@"'
    probe = subprocess.run([*prefix, script, "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        reason = f"no user namespace to limit inotify watches in: {probe.stderr!r}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)  # CI's machine has them: never skip there
        pytest.skip(reason)
    return (*prefix, script)


def test_a_tree_past_the_inotify_watch_limit_is_a_one_line_error(
    sqlite_template: Path, tmp_path: Path
) -> None:
    database = tmp_path / "docqueue.db"
    shutil.copyfile(sqlite_template, database)
    folder = tmp_path / "archive"
    for number in range(30):
        (folder / f"box-{number:02}").mkdir(parents=True)

    watcher = Watcher(f"sqlite:///{database}", folder, "--recursive", prefix=limited_watches(10))
    watcher.process.wait(timeout=60)
    exit_code, stdout = watcher.stop()

    stderr = "".join(watcher.stderr_lines)
    assert exit_code == 1
    assert stdout == ""  # stopped before its first pass: nothing was read
    assert "Traceback" not in stderr
    [line] = stderr.splitlines()
    assert line.startswith(f"Error: cannot watch {folder}: the limit on inotify watches")
    assert "fs.inotify.max_user_watches" in line


def test_folders_made_past_the_inotify_watch_limit_stop_the_watch_with_a_line(
    app: Flask, database_url: str, folder: Path
) -> None:
    # A tree that outgrows the limit while watched: inotify refuses the new folders'
    # watches, and the files written into them later were missed, with no word said.
    watcher = Watcher(database_url, folder, "--recursive", prefix=limited_watches(4))
    try:
        wait_for(lambda: said(watcher, "watching "), "the watch to start")
        for number in range(6):
            (folder / f"box-{number}").mkdir()
        watcher.process.wait(timeout=30)
        exit_code, stdout = watcher.stop()
    finally:
        watcher.kill()

    stderr = "".join(watcher.stderr_lines)
    assert exit_code == 1
    assert summaries(stdout) == [{"imported": 0, "duplicates": 0, "rejected": 0}]
    assert "Traceback" not in stderr
    assert f"Import stopped: cannot watch every new folder (at {folder}/box-" in stderr
    assert "the limit on inotify watches" in stderr


def test_a_watch_killed_in_its_first_pass_and_started_again_imports_each_file_once(
    app: Flask, database_url: str, folder: Path
) -> None:
    # SIGKILL (the OOM killer, a host's reboot) leaves no summary; run again, the
    # watch stores what the first run did not and names the rest as duplicates.
    for number in range(1000):
        (folder / f"{number:04}.txt").write_text(f"file {number}\n")
        os.utime(folder / f"{number:04}.txt", (time.time() - 3600,) * 2)
    killed = Watcher(database_url, folder)
    try:
        wait_for(lambda: count(app, Document) > 0, "the first batch")
    finally:
        killed.kill()
    stored_before = count(app, Document)

    with watching(database_url, folder) as watcher:
        write_last(app, folder)
        exit_code, stdout = watcher.stop()

    assert summaries(stdout) == [
        {"imported": 1001 - stored_before, "duplicates": stored_before, "rejected": 0}
    ]
    assert count(app, Document) == 1001
    assert exit_code == 0


def test_a_link_to_a_folder_made_while_watching_is_not_followed(
    app: Flask, database_url: str, folder: Path
) -> None:
    # As in a folder import (links to folders are not followed, even with --recursive),
    # a link made while watching neither brings the files it points to into the import
    # nor passes for a folder the watcher could not watch.
    outside = folder.with_name("outside")
    outside.mkdir()
    (outside / "private.txt").write_text("outside the watched tree\n")

    with watching(database_url, folder, "--recursive") as watcher:
        (folder / "link-to-outside").symlink_to(outside)
        write_last(app, folder)
        exit_code, stdout = watcher.stop()

    assert documents_named(app, "private.txt") == []
    assert summaries(stdout) == [{"imported": 1, "duplicates": 0, "rejected": 0}]
    assert exit_code == 0


def test_a_watch_forgets_the_files_that_are_gone(app: Flask, tmp_path: Path) -> None:
    # A watch keeps each file's signature so that late events do not import it again;
    # kept for files deleted after their import (an inbox emptied as it is read), they
    # grew its memory without end: about 160 MB a month at 10,000 files a day.
    from watchfiles import Change

    from docqueue_app.imports import Importer, PlainReport, Watch, _import_settled

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    watch = Watch([inbox], recursive=False)
    watch.settling.settle_seconds = 0
    importer = Importer(0, None, PlainReport())
    with app.app_context():
        for number in range(3):
            scan = inbox / f"scan{number}.txt"
            scan.write_text(f"scan number {number}")
            _import_settled(importer, watch, {(Change.added, str(scan))})
            _import_settled(importer, watch, set())  # its signature held still: imported
            scan.unlink()
            _import_settled(importer, watch, {(Change.deleted, str(scan))})

    assert importer.counts.imported == 3
    assert importer.signatures == {}


def test_a_folder_made_while_watching_without_recursive_is_named_as_skipped(
    app: Flask, database_url: str, folder: Path
) -> None:
    # A folder import says how many subfolders it skipped; a watch passed over a new
    # one without a word, and the files a scanner then wrote into it were never imported.
    with watching(database_url, folder) as watcher:
        (folder / "2026-12").mkdir()
        (folder / "2026-12" / "scan.txt").write_text("written into the new subfolder\n")
        write_last(app, folder)
        exit_code, stdout = watcher.stop()

    skipped = [line for line in watcher.stderr_lines if "2026-12" in line]
    assert skipped == [
        f"skipped new subfolder {folder / '2026-12'}: add --recursive to import its files\n"
    ]
    assert documents_named(app, "scan.txt") == []
    assert summaries(stdout) == [{"imported": 1, "duplicates": 0, "rejected": 0}]
    assert exit_code == 0
