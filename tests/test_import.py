"""`docqueue import` (SPEC §7): folders submitted as uploads are, refusals named, --watch.

The folder is made in tmp_path of files copied from the shared corpus, plus
files an upload would refuse and entries that cannot be read (a dangling
symbolic link, a FIFO: chmod 000 stops no one when the tests run as root).
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from flask import Flask
from sqlalchemy import func, select

from docqueue_app.documents import original_bytes
from docqueue_app.imports import Refused, read_source
from docqueue_app.models import Document, QueueItem, db
from tests.conftest import PG_ADMIN_URL
from tests.e2e.server import BIN, wait_for
from tests.processing.corpus import CONTENT_TYPE_BY_KIND, CORPUS_DIR, requires_corpus

pytestmark = requires_corpus

# One file of each supported kind, by its corpus path.
CORPUS_FILES = {
    "pdf/libreoffice-writer-trivial.pdf": "pdf",
    "docx/word-tables.docx": "docx",
    "html/tika-resume.html": "html",
    "text/utf8-russian.txt": "text",
    "markdown/tika-testMARKDOWN.md": "markdown",
    "csv/tika-testCSV.csv": "csv",
    "json/pdf-sample-files-index.json": "json",
}
COPY_NAME = "copy-of-russian.txt"  # the same bytes as utf8-russian.txt
SUBFOLDER_FILE = "csv/tika-columnar.csv"
# What the import must say of each refused entry of the folder.
REFUSALS = {
    "prog": "an ELF executable",
    "setup.exe": "a Windows executable",
    "empty.txt": "is empty",
    "gone.pdf": "which does not exist",
    "pipe": "not a regular file (a FIFO)",
}
FIRST_SUMMARY = {"imported": 7, "duplicates": 1, "rejected": 5}


def make_folder(root: Path) -> Path:
    """Seven corpus files, one of them twice, refused entries, a hidden file, a subfolder."""
    folder = root / "in"
    (folder / "sub").mkdir(parents=True)
    for relative in CORPUS_FILES:
        shutil.copyfile(CORPUS_DIR / relative, folder / Path(relative).name)
    shutil.copyfile(CORPUS_DIR / "text/utf8-russian.txt", folder / COPY_NAME)
    shutil.copyfile(CORPUS_DIR / SUBFOLDER_FILE, folder / "sub" / Path(SUBFOLDER_FILE).name)
    (folder / "prog").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(56))
    (folder / "setup.exe").write_bytes(b"MZ\x90\x00\x03\x00\x00\x00" + bytes(120))
    (folder / "empty.txt").write_bytes(b"")
    (folder / "gone.pdf").symlink_to(root / "nowhere.pdf")
    os.mkfifo(folder / "pipe")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path)


def invoke(app: Flask, *args: str):
    return app.test_cli_runner().invoke(args=["import", *map(str, args)])


def summary(result) -> dict[str, int]:
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.output
    return json.loads(lines[0])


def stored(app: Flask) -> dict[bytes, tuple[str, str, int]]:
    """Each document by its bytes: filename, content type, its item's priority."""
    with app.app_context():
        rows = db.session.execute(
            select(Document, QueueItem.priority).join(
                QueueItem, QueueItem.document_id == Document.id
            )
        ).all()
        return {
            original_bytes(document.id): (document.filename, document.content_type, priority)
            for document, priority in rows
        }


def count(app: Flask, model: type) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def test_a_folder_is_imported_with_refused_files_named(app: Flask, folder: Path) -> None:
    result = invoke(app, folder, "--priority", "7")

    assert result.stdout == json.dumps(FIRST_SUMMARY) + "\n"
    assert result.exit_code == 1
    refused = [line for line in result.stderr.splitlines() if line.startswith("refused ")]
    assert len(refused) == len(REFUSALS)
    for name, reason in REFUSALS.items():
        assert any(
            line.startswith(f"refused {folder / name}: ") and reason in line for line in refused
        )
    documents = stored(app)
    assert len(documents) == len(CORPUS_FILES)  # the copy is a duplicate, not a document
    for relative, kind in CORPUS_FILES.items():
        filename, content_type, priority = documents[(CORPUS_DIR / relative).read_bytes()]
        assert filename in (Path(relative).name, COPY_NAME)  # the first of the two read
        assert (content_type, priority) == (CONTENT_TYPE_BY_KIND[kind], 7)


def test_a_refused_name_with_terminal_escapes_is_printed_escaped(
    app: Flask, tmp_path: Path
) -> None:
    # A file name may hold any byte but "/" and NUL: printed as it is, an ESC sequence
    # in it would drive the terminal of whoever runs the import (clear the screen,
    # retitle the window, hide the lines before it).
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "evil\x1b[2J\x1b]0;owned\x07\r.txt").write_bytes(b"")

    result = invoke(app, folder)

    [line] = [line for line in result.stderr.splitlines() if line.startswith("refused ")]
    assert not any(character in line for character in "\x1b\x07\r")
    assert f"refused {folder}/evil\\x1b[2J\\x1b]0;owned\\x07\\r.txt: " in line


def test_importing_again_reports_every_file_as_a_duplicate(app: Flask, folder: Path) -> None:
    invoke(app, folder)
    items = count(app, QueueItem)

    again = invoke(app, folder)

    assert summary(again) == {"imported": 0, "duplicates": 8, "rejected": 5}
    assert again.exit_code == 1
    assert count(app, QueueItem) == items  # nothing queued again


def test_subfolders_only_with_recursive(app: Flask, folder: Path) -> None:
    subfolder_file = (CORPUS_DIR / SUBFOLDER_FILE).read_bytes()
    flat = invoke(app, folder)
    assert subfolder_file not in stored(app)
    assert "skipped 1 subfolder(s): add --recursive" in flat.stderr

    deep = invoke(app, folder, "--recursive")

    assert summary(deep) == {"imported": 1, "duplicates": 8, "rejected": 5}
    assert subfolder_file in stored(app)


def test_only_clean_files_exit_zero(app: Flask, tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# a note\n")
    (tmp_path / "b.txt").write_text("another note\n")

    result = invoke(app, tmp_path / "a.md", tmp_path / "b.txt")

    assert (result.exit_code, summary(result)) == (
        0,
        {"imported": 2, "duplicates": 0, "rejected": 0},
    )
    assert result.stderr == ""


def snapshot(folder: Path) -> dict[Path, tuple[int, int, bytes | None]]:
    """Every entry's mode, mtime and bytes (a regular file's), without following links."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        status = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        entries[path] = (status.st_mode, status.st_mtime_ns, content)
    return entries


def test_source_files_are_left_untouched(app: Flask, folder: Path) -> None:
    before = snapshot(folder)

    invoke(app, folder, "--recursive")

    assert snapshot(folder) == before


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--priority", "11"),
        ("--priority", "high"),
        ("--callback-url", "ftp://example.com/hook"),
        ("--callback-url", "http://127.0.0.1:9/hook"),  # private, not allowed
    ],
)
def test_bad_options_are_usage_errors(app: Flask, folder: Path, option: str, value: str) -> None:
    result = invoke(app, folder, option, value)

    assert result.exit_code == 2
    assert option in result.stderr
    assert count(app, Document) == 0


def test_callback_url_is_stored_when_private_hosts_are_allowed(make_app, tmp_path: Path) -> None:
    app = make_app(WEBHOOK_ALLOW_PRIVATE=True)
    (tmp_path / "a.txt").write_text("a note\n")

    result = invoke(app, tmp_path / "a.txt", "--callback-url", "http://127.0.0.1:9/hook")

    assert result.exit_code == 0, result.output
    with app.app_context():
        assert db.session.scalar(select(Document.callback_url)) == "http://127.0.0.1:9/hook"


def test_a_file_that_vanished_is_refused_with_the_reason(app: Flask, tmp_path: Path) -> None:
    path = tmp_path / "was-here.txt"  # listed, then removed before it was read
    with app.app_context(), pytest.raises(Refused, match="vanished before it could be read"):
        read_source(path, 5, None)


# -- the command as a process: a terminal, --watch, an outage ------------------------


def docqueue_env(database_url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database_url, "DOCQUEUE_SCHEDULER_ENABLED": "false"}


def test_a_terminal_gets_a_progress_bar(sqlite_template: Path, tmp_path: Path) -> None:
    database = tmp_path / "docqueue.db"
    shutil.copyfile(sqlite_template, database)
    folder = make_folder(tmp_path)
    terminal, terminal_end = pty.openpty()
    with os.fdopen(terminal, "rb", buffering=0) as screen:
        completed = subprocess.run(
            [str(BIN / "docqueue"), "import", str(folder)],
            env=docqueue_env(f"sqlite:///{database}"),
            stdout=subprocess.PIPE,
            stderr=terminal_end,
            timeout=120,
        )
        os.close(terminal_end)
        shown = read_all(screen).decode(errors="replace")

    assert completed.returncode == 1
    assert json.loads(completed.stdout) == FIRST_SUMMARY
    assert "━" in shown and "100%" in shown  # the bar, drawn to the end
    assert f"refused {folder / 'pipe'}: not a regular file (a FIFO)" in shown


def read_all(screen) -> bytes:
    chunks = []
    while True:
        try:
            chunk = screen.read(65536)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_an_interrupted_import_stops_between_batches_and_prints_what_it_stored(
    app: Flask, database_url: str, tmp_path: Path
) -> None:
    # Ctrl-C (SIGINT) in a long import: the batch in hand is stored, the summary
    # counts what was, and the exit code says it was interrupted (130, as a shell's).
    folder = tmp_path / "in"
    folder.mkdir()
    for number in range(20_000):
        (folder / f"{number}.txt").write_bytes(f"file {number}\n".encode())
    process = subprocess.Popen(
        [str(BIN / "docqueue"), "import", str(folder)],
        env=docqueue_env(database_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: count(app, Document) > 0, "the first batch")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    counts = json.loads(stdout)
    assert 0 < counts["imported"] == count(app, Document) < 20_000
    assert "Import interrupted" in stderr and "Traceback" not in stderr


class Watcher:
    """`docqueue import ARGS... --watch` in a process of its own; its stderr read as it comes.

    ``prefix`` is a command that runs it (with its arguments).
    """

    def __init__(self, database_url: str, *args: str | Path, prefix: tuple[str, ...] = ()) -> None:
        self.process = subprocess.Popen(
            [*prefix, str(BIN / "docqueue"), "import", *map(str, args), "--watch"],
            env=docqueue_env(database_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr_lines: list[str] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line)

    def wait_watching(self) -> None:
        wait_for(lambda: any(line.startswith("watching ") for line in self.stderr_lines), "watch")

    def stop(self) -> tuple[int, str]:
        """SIGTERM; the exit code and stdout."""
        self.process.send_signal(signal.SIGTERM)
        stdout, _ = self.process.communicate(timeout=30)
        self._reader.join(timeout=10)
        return self.process.returncode, stdout

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextmanager
def watching(database_url: str, *args: str | Path) -> Iterator[Watcher]:
    watcher = Watcher(database_url, *args)
    try:
        watcher.wait_watching()
        yield watcher
    finally:
        watcher.kill()


def documents_named(app: Flask, filename: str) -> list[bytes]:
    with app.app_context():
        ids = db.session.scalars(select(Document.id).where(Document.filename == filename)).all()
        return [original_bytes(document_id) for document_id in ids]


def test_watch_imports_a_slowly_written_file_once_after_its_last_chunk(
    app: Flask, database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "there-before.txt").write_text("imported by the first pass\n")
    chunks = [f"chunk {number} ".encode() * 200 for number in range(4)]

    with watching(database_url, folder) as watcher:
        with open(folder / "slow.txt", "wb") as slow:
            for chunk in chunks:
                slow.write(chunk)
                slow.flush()
                assert documents_named(app, "slow.txt") == []  # still growing: not yet
                time.sleep(0.4)
        wait_for(lambda: documents_named(app, "slow.txt"), "the slow file's import", timeout=30)
        exit_code, stdout = watcher.stop()

    assert documents_named(app, "slow.txt") == [b"".join(chunks)]
    assert stdout.splitlines() == [json.dumps({"imported": 2, "duplicates": 0, "rejected": 0})]
    assert exit_code == 0


@contextmanager
def connections_refused(database_url: str) -> Iterator[None]:
    """The database refuses connections and drops the ones it has, until the block ends."""
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def test_a_database_outage_stops_the_import_with_a_message(
    postgresql_clean: str, tmp_path: Path
) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "first.txt").write_text("stored before the outage\n")

    with watching(postgresql_clean, folder) as watcher:
        with connections_refused(postgresql_clean):
            (folder / "second.txt").write_text("arrives during the outage\n")
            watcher.process.wait(timeout=30)
        exit_code, stdout = watcher.stop()

    stderr = "".join(watcher.stderr_lines)
    assert exit_code == 3
    assert stdout.splitlines() == [json.dumps({"imported": 1, "duplicates": 0, "rejected": 0})]
    assert "Import stopped: the database is unreachable" in stderr
    assert "Traceback" not in stderr
    with psycopg.connect(postgresql_clean) as connection:
        filenames = connection.execute("SELECT filename FROM documents").fetchall()
    assert filenames == [("first.txt",)]  # what was committed stays committed
