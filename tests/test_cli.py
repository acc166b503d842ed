"""The command line: db upgrade from any folder, queue commands printing one JSON line."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask.cli import cli as flask_cli

from docqueue_app import create_app
from docqueue_app.cli import OUTAGE_EXIT_CODE, DocqueueGroup
from docqueue_app.models import Document, db
from docqueue_app.processing import extract
from docqueue_app.queue import DocumentQueueService
from tests.conftest import BASE_CONFIG
from tests.e2e.server import BIN, free_port
from tests.helpers import close_connections, wait_until
from tests.test_config import unwritable

CHECKOUT = Path(__file__).resolve().parent.parent


def submit(app, data: bytes = b"some words here") -> int:
    with app.app_context():
        document, _ = DocumentQueueService().submit_document("a.txt", data, "text/plain")
        return document.id


def test_queue_process_prints_its_counts_as_json(app, runner):
    submit(app)
    result = runner.invoke(args=["queue", "process"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"processed": 1, "completed": 1, "failed": 0, "retried": 0}


def test_queue_stats_prints_one_json_line(app, runner):
    submit(app)
    result = runner.invoke(args=["queue", "stats"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    stats = json.loads(lines[0])
    assert (stats["pending"], stats["total"]) == (1, 1)


def test_retry_failed_and_purge(app, runner):
    doc_id = submit(app)
    with app.app_context():
        service = DocumentQueueService()
        [item] = service.claim_due_items(1, "w")
        service.mark_failed(item, "boom", permanent=True)
    assert json.loads(runner.invoke(args=["queue", "retry-failed"]).stdout) == {"retried": 1}
    runner.invoke(args=["queue", "process"])
    runner.invoke(args=["queue", "retry-failed"])  # nothing failed now: nothing retried
    with app.app_context():
        DocumentQueueService().enqueue(doc_id, "reprocess")
    runner.invoke(args=["queue", "process"])
    purged = runner.invoke(args=["queue", "purge", "--older-than-days", "0"])
    assert json.loads(purged.stdout) == {"deleted": 2}
    with app.app_context():
        assert DocumentQueueService().get_queue_stats()["total"] == 0
        assert db.session.get(Document, doc_id).status == "completed"


def run_script(
    script: str, *args: str, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess:
    """A console script of the virtualenv (``docqueue``, ``flask``) run as a user would."""
    return subprocess.run(
        [str(BIN / script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def sqlite_env(tmp_path: Path) -> dict[str, str]:
    return {"DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}", "DOCQUEUE_SECRET_KEY": "k"}


def test_console_script_migrates_from_any_folder(tmp_path):
    env = sqlite_env(tmp_path)
    upgrade = run_script("docqueue", "db", "upgrade", cwd=tmp_path, env=env)
    assert upgrade.returncode == 0, upgrade.stderr
    stats = run_script("docqueue", "queue", "stats", cwd=tmp_path, env=env)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["total"] == 0


def test_db_commands_print_alembic_migrations_and_not_its_plugin_setup(tmp_path):
    # `docqueue db ...` printed seven lines "INFO setup plugin alembic...." first,
    # even for --help, which `flask --app docqueue_app db ...` never showed.
    env = sqlite_env(tmp_path)
    help_text = run_script("docqueue", "db", "upgrade", "--help", cwd=tmp_path, env=env)
    assert (help_text.returncode, help_text.stderr) == (0, "")
    upgrade = run_script("docqueue", "db", "upgrade", cwd=tmp_path, env=env)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "setup plugin" not in upgrade.stderr
    assert "Running upgrade" in upgrade.stderr


@pytest.mark.parametrize("launcher", [["docqueue"], ["flask", "--app", "docqueue_app"]])
def test_both_launchers_offer_every_command_and_the_whole_app(tmp_path, launcher):
    # `docqueue` builds the queue commands an app without the web parts: the
    # commands that serve or show them still get all of it.
    script, *app_option = launcher
    env = sqlite_env(tmp_path)

    def output(*args: str) -> str:
        result = run_script(script, *app_option, *args, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert {"db", "import", "queue", "routes", "shell", "run"} <= command_names(output("--help"))
    queue_commands = command_names(output("queue", "--help"))
    assert {"worker", "process", "stats", "retry-failed", "purge"} <= queue_commands
    rules = {line.split()[-1] for line in output("routes").splitlines()[2:]}
    assert {"/api/documents", "/api/openapi.json", "/admin/", "/metrics", "/healthz"} <= rules


@pytest.mark.parametrize(
    ("command", "phrases"),
    [
        (
            ["queue", "worker"],
            [
                "DOCQUEUE_CONCURRENCY (2 when unset)",
                "DOCQUEUE_BATCH_SIZE (10 when unset)",
                "DOCQUEUE_POLL_INTERVAL (1 when unset)",
                "SIGINT",
            ],
        ),
        (["queue", "process"], ["DOCQUEUE_BATCH_SIZE (10 when unset)"]),
        (["queue", "purge"], ["Age in days of the finished items to delete, 0 to 36500"]),
        (["import"], ["with --watch they end it with 0"]),
    ],
    ids=["queue worker", "queue process", "queue purge", "import"],
)
def test_each_commands_help_names_the_settings_behind_its_defaults(runner, command, phrases):
    # The worker's help said "Default: CONCURRENCY", a name no variable has; purge's
    # required --older-than-days said nothing; import's said SIGINT exits 130, which
    # --watch does not.
    result = runner.invoke(args=[*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for phrase in phrases:
        assert phrase in text


def test_docqueue_version_is_docqueues(tmp_path):
    # It printed Flask's own --version: Python, Flask and Werkzeug, not docqueue.
    result = run_script("docqueue", "--version", cwd=tmp_path, env=sqlite_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"docqueue {version('docqueue')} (Flask ")


def command_names(help_text: str) -> set[str]:
    """The commands a click --help lists."""
    listing = help_text.split("Commands:", 1)[1]
    return {line.split()[0] for line in listing.splitlines() if line.startswith("  ")}


ONE_SHOT_COMMANDS = [
    ["queue", "process"],
    ["queue", "stats"],
    ["queue", "retry-failed"],
    ["queue", "purge", "--older-than-days", "1"],
    ["import", "."],
]


def assert_stopped_by_the_database(result: subprocess.CompletedProcess, kind: str) -> None:
    """Exit 3 with a line on stderr saying what is wrong with the database; no traceback."""
    assert result.returncode == OUTAGE_EXIT_CODE, result.stderr
    assert f"the database is {kind}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "[SQL:" not in result.stderr


@pytest.mark.parametrize("launcher", [["docqueue"], ["flask", "--app", "docqueue_app"]])
@pytest.mark.parametrize("command", [*ONE_SHOT_COMMANDS, ["db", "upgrade"]], ids=" ".join)
def test_a_command_meeting_an_unreachable_database_says_so_in_one_line(tmp_path, launcher, command):
    (tmp_path / "a.txt").write_text("to import")
    env = {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/docqueue"}
    script, *app_option = launcher
    result = run_script(script, *app_option, *command, cwd=tmp_path, env=env)
    assert_stopped_by_the_database(result, "unreachable")


@pytest.mark.parametrize("command", ONE_SHOT_COMMANDS, ids=" ".join)
def test_a_command_on_a_database_not_migrated_names_the_command_that_fixes_it(
    tmp_path, unmigrated_database_url, command
):
    (tmp_path / "a.txt").write_text("to import")
    env = {"DATABASE_URL": unmigrated_database_url}
    result = run_script("docqueue", *command, cwd=tmp_path, env=env)
    assert_stopped_by_the_database(result, "not migrated")
    assert "docqueue db upgrade" in result.stderr


def test_a_worker_started_before_the_migrations_waits_for_them_without_tracebacks(
    tmp_path, unmigrated_database_url
):
    env = {"DATABASE_URL": unmigrated_database_url}
    worker = subprocess.Popen(
        [str(BIN / "docqueue"), "queue", "worker", "--poll-interval", "0.05"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)  # several passes meet the missing tables meanwhile
        assert run_script("docqueue", "db", "upgrade", cwd=tmp_path, env=env).returncode == 0
        (tmp_path / "a.txt").write_text("some words to extract")
        assert run_script("docqueue", "import", "a.txt", cwd=tmp_path, env=env).returncode == 0
        wait_until(lambda: queue_stats(tmp_path, env)["completed"] == 1, timeout=60)
    finally:
        worker.terminate()
        _, log = worker.communicate(timeout=30)
    assert worker.returncode == 0, log
    assert "Traceback" not in log
    waiting = [line for line in log.splitlines() if "not migrated" in line]
    assert len(waiting) == 1, log  # one line when it begins, not one per pass
    assert "docqueue db upgrade" in waiting[0]


def queue_stats(folder: Path, env: dict[str, str]) -> dict[str, int]:
    return json.loads(run_script("docqueue", "queue", "stats", cwd=folder, env=env).stdout)


# -- settings and arguments out of range: one line, exit 2 ---------------------------

BAD_POLL_INTERVAL = "Error: DOCQUEUE_POLL_INTERVAL must be a number >= 0.01 and <= 86400, got 'abc'"


def bad_poll_interval_env(tmp_path: Path) -> dict[str, str | None]:
    # Flask's group sets FLASK_RUN_FROM_CLI; named here, it is put back as it was after.
    return {**sqlite_env(tmp_path), "DOCQUEUE_POLL_INTERVAL": "abc", "FLASK_RUN_FROM_CLI": None}


@pytest.mark.parametrize(
    "launcher",
    [
        pytest.param(lambda args: (DocqueueGroup(create_app=create_app), args), id="docqueue"),
        pytest.param(lambda args: (flask_cli, ["--app", "docqueue_app", *args]), id="flask"),
    ],
)
@pytest.mark.parametrize("command", [*ONE_SHOT_COMMANDS, ["db", "upgrade"]], ids=" ".join)
def test_a_bad_setting_ends_a_command_with_one_line_and_exit_2(tmp_path, launcher, command):
    group, args = launcher(command)
    env = bad_poll_interval_env(tmp_path)
    result = CliRunner().invoke(group, args, env=env)
    assert (result.exit_code, result.stderr.strip()) == (2, BAD_POLL_INTERVAL), result.output


def test_a_bad_setting_ends_docqueue_help_with_one_line_and_exit_2(tmp_path):
    group = DocqueueGroup(create_app=create_app)
    result = CliRunner().invoke(group, ["--help"], env=bad_poll_interval_env(tmp_path))
    assert (result.exit_code, result.stderr.strip()) == (2, BAD_POLL_INTERVAL), result.output


def test_flask_help_with_a_bad_setting_says_so_in_one_line_and_lists_flasks_commands(tmp_path):
    # Flask's help lists its own commands even when the app cannot load, with the
    # reason in one line for an app it cannot find; a bad setting printed a traceback.
    env = {**sqlite_env(tmp_path), "DOCQUEUE_POLL_INTERVAL": "abc"}
    result = run_script("flask", "--app", "docqueue_app", "--help", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == BAD_POLL_INTERVAL
    assert {"routes", "run", "shell"} <= command_names(result.stdout)


def test_a_bad_setting_shows_no_traceback_through_the_console_script(tmp_path):
    env = {**sqlite_env(tmp_path), "DOCQUEUE_RETENTION_DAYS": "-5"}
    result = run_script("docqueue", "queue", "stats", cwd=tmp_path, env=env)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "Error: DOCQUEUE_RETENTION_DAYS must be a whole number >= 1 and <= 36500, got '-5'\n"
    )


@pytest.mark.parametrize(
    "command", [["queue", "worker"], *ONE_SHOT_COMMANDS, ["db", "upgrade"]], ids=" ".join
)
def test_a_sqlite_folder_this_user_cannot_write_ends_every_command_in_one_line(tmp_path, command):
    # The worker died of a PermissionError traceback (exit 1), making its wake socket;
    # the others said "the database is unreachable: unable to open database file".
    (tmp_path / "a.txt").write_text("to import")
    with unwritable(tmp_path / "locked") as folder:
        env = {**sqlite_env(tmp_path), "DATABASE_URL": f"sqlite:///{folder}/docqueue.db"}
        result = run_script("docqueue", *command, cwd=tmp_path, env=env)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"Error: DATABASE_URL names a SQLite database in {folder}, a folder that this user "
        "cannot write (SQLite writes its journal there)\n"
    )


@pytest.mark.parametrize(
    "args",
    [
        *(
            ["queue", "purge", "--older-than-days", days]
            for days in ("36501", "740000", "1e308", "inf", "nan", "-1")
        ),
        ["queue", "process", "--limit", "99999999999999999999"],
        ["queue", "process", "--limit", "0"],
        *(["queue", "worker", "--poll-interval", s] for s in ("1e10", "inf", "nan", "0")),
        ["queue", "worker", "--batch-size", "99999999999999999999"],
        ["queue", "worker", "--concurrency", "99999999999999999999"],
    ],
    ids=" ".join,
)
def test_a_number_out_of_range_is_a_usage_error(runner, args):
    result = runner.invoke(args=args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{args[2]}'" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_the_purge_age_the_api_accepts_is_accepted(runner):
    result = runner.invoke(args=["queue", "purge", "--older-than-days", "36500"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"deleted": 0}


# -- what a processor prints stays off stdout -------------------------------------------


def chatty_extract(content: bytes, filename: str, content_type: str) -> dict:
    """The built-in extractor, printing its progress as a careless custom processor would."""
    print(f"chatty: reading {filename}")
    return extract(content, filename, content_type)


CHATTY_PROCESSOR = "tests.test_cli:chatty_extract"
COUNTS_OF_ONE = {"processed": 1, "completed": 1, "failed": 0, "retried": 0}


def test_queue_process_sends_what_the_processor_prints_to_stderr(make_app):
    app = make_app(PROCESSOR=CHATTY_PROCESSOR)  # in this process: PROCESS_ISOLATION=none
    submit(app)
    result = app.test_cli_runner().invoke(args=["queue", "process"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == [COUNTS_OF_ONE]
    assert "chatty: reading a.txt" in result.stderr


def tool_running_extract(content: bytes, filename: str, content_type: str) -> dict:
    """The built-in extractor after a command-line tool whose output is not captured
    (it writes on the stdout it inherits), as a custom processor may run one."""
    subprocess.run(["echo", f"tool: reading {filename}"], check=True)
    return extract(content, filename, content_type)


def queue_process_run(tmp_path, sqlite_template, processor: str, isolation: str):
    """``docqueue queue process`` as a user runs it, over one document."""
    database = tmp_path / "docqueue.db"
    shutil.copyfile(sqlite_template, database)
    app = create_app({**BASE_CONFIG, "DATABASE_URL": f"sqlite:///{database}"})
    submit(app)
    close_connections(app)
    env = {
        "DATABASE_URL": f"sqlite:///{database}",
        "DOCQUEUE_PROCESSOR": processor,
        "DOCQUEUE_PROCESS_ISOLATION": isolation,
        "PYTHONPATH": str(CHECKOUT),
    }
    result = run_script("docqueue", "queue", "process", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [COUNTS_OF_ONE]
    return result


def test_a_sandboxed_processor_prints_to_stderr_too(tmp_path, sqlite_template):
    result = queue_process_run(tmp_path, sqlite_template, CHATTY_PROCESSOR, "subprocess")
    assert "chatty: reading a.txt" in result.stderr


@pytest.mark.parametrize("isolation", ["none", "subprocess"])
def test_what_a_tool_run_by_the_processor_prints_goes_to_stderr(
    tmp_path, sqlite_template, isolation
):
    """Not only Python's print: a program (or a C library) writes on file descriptor 1."""
    result = queue_process_run(
        tmp_path, sqlite_template, "tests.test_cli:tool_running_extract", isolation
    )
    assert "tool: reading a.txt" in result.stderr
