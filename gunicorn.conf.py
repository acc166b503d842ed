"""gunicorn settings for docqueue: ``gunicorn -c gunicorn.conf.py wsgi:app``.

One worker of the host runs the queue scheduler (DOCQUEUE_CONCURRENCY documents
at once); the others stand by and the first to notice its death takes over, so
adding workers adds request capacity, not polling. A stopping worker (SIGTERM,
a restart, a reload) finishes the documents in hand and hands its other claimed
items back before it exits.
Override anything on the command line or with GUNICORN_CMD_ARGS.
"""

import contextlib
import os
import shutil
import sys
import tempfile

bind = "127.0.0.1:8000"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = 4
timeout = 60
# A stopping worker gets this long to finish the document in hand. One that takes
# longer dies with the worker: its item (and the batch's unstarted items, handed
# back only after it) wait out their lease, and that attempt counts.
graceful_timeout = 30
accesslog = "-"

# prometheus-client adds up every worker's counters through files in this folder.
# One made here is removed when the master exits (on_exit). A reload (SIGHUP) reads
# this file again, with the variable set: the pid noted beside it says the folder is
# still this master's own (without it the master left the folder in TMPDIR). A binary
# upgrade (SIGUSR2) hands the folder, and the pid, to the new master (pre_exec).
_MADE_BY = "DOCQUEUE_METRICS_FOLDER_MADE_BY"
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="docqueue-metrics-")
    os.environ[_MADE_BY] = str(os.getpid())
_metrics_dir_made_here = os.environ.get(_MADE_BY) == str(os.getpid())
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def on_starting(server):
    refuse_bad_settings(server)
    refuse_no_workers(server)
    empty_metrics_folder(server)


def refuse_bad_settings(server):
    """Stop here, with one line, on a bad setting (exit 2).

    Each worker builds the app, and would otherwise die of the ConfigError with a
    traceback, every one of them, before gunicorn gives up (HaltServer).
    """
    from docqueue_app.config import ConfigError, check_environment

    try:
        check_environment()
    except ConfigError as error:
        server.log.error("Error: %s", error.format_message())
        sys.exit(error.exit_code)


def refuse_no_workers(server):
    """gunicorn takes 0 workers: its master then listens and never answers."""
    if server.cfg.workers < 1:
        server.log.error(
            "Error: gunicorn needs at least 1 worker (WEB_CONCURRENCY or --workers), got %s",
            server.cfg.workers,
        )
        sys.exit(2)


def empty_metrics_folder(server):
    """Start the counters from zero, or stop here with one line (exit 2) if the folder
    cannot be written, rather than with a traceback.

    Not on a binary upgrade (SIGUSR2; gunicorn sets master_pid to the old master's):
    the old workers still count in the folder, and their counts must not vanish.
    """
    if not server.master_pid:
        # Counters from an earlier run of the server would otherwise be added in.
        shutil.rmtree(_metrics_dir, ignore_errors=True)
    try:
        os.makedirs(_metrics_dir, exist_ok=True)
        writable = os.access(_metrics_dir, os.W_OK | os.X_OK)
        reason = "this user cannot write"
    except OSError as error:
        writable, reason = False, f"cannot be made ({error.strerror})"
    if not writable:
        server.log.error(
            "Error: PROMETHEUS_MULTIPROC_DIR names %s, a folder that %s", _metrics_dir, reason
        )
        sys.exit(2)


# The kinds of metric docqueue_app/metrics.py keeps, each in a file of its own per worker.
METRIC_FILE_KINDS = ("counter", "histogram")


def post_fork(server, worker):
    from docqueue_app.serving import answer_gunicorn_errors_in_json

    route_app_logs(server)
    reserve_metrics_files(server)
    # The worker writes gunicorn's own error answers (a request it refuses before the
    # app sees it, its 500): in the JSON error shape, not as gunicorn's HTML page.
    answer_gunicorn_errors_in_json()


def route_app_logs(server):
    """docqueue's own lines go where gunicorn's go, with its time, pid and level.

    Python drops a library's INFO lines unless a handler takes them: a worker's
    completed documents, the scheduler's start and an outage's end were never
    seen, and warnings came out bare, without time or process.
    """
    import logging

    errors = server.log.error_log
    app_log = logging.getLogger("docqueue_app")
    app_log.handlers = list(errors.handlers)
    app_log.setLevel(errors.level)
    app_log.propagate = False


def reserve_metrics_files(server):
    """Give this worker's metric files their disk space before prometheus-client maps them.

    prometheus-client makes them sparse and writes through the mapping, so on a full
    disk the first write killed the worker with SIGBUS, and every worker gunicorn
    started after it, and the server answered nothing until there was room. With no
    room now, this worker counts in its own memory instead and serves; /metrics then
    leaves its counts out.
    """
    from prometheus_client import mmap_dict, values

    size = getattr(mmap_dict, "_INITIAL_MMAP_SIZE", 64 * 1024)
    paths = [os.path.join(_metrics_dir, f"{kind}_{os.getpid()}.db") for kind in METRIC_FILE_KINDS]
    try:
        for path in paths:
            _allocate(path, size)
    except OSError as error:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # /metrics would fail to read an empty file
        values.ValueClass = values.MutexValue
        server.log.error(
            "Worker %s: no room for this worker's metrics in %s (%s): it serves, and "
            "/metrics leaves its counts out until it is restarted with room",
            os.getpid(),
            _metrics_dir,
            error.strerror,
        )


def _allocate(path, size):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def post_worker_init(worker):
    from docqueue_app import warm_up
    from docqueue_app.queue.scheduler import get_scheduler

    warm_up(worker.wsgi, worker.cfg.threads)  # before the worker takes requests
    get_scheduler(worker.wsgi).start()  # runs it, or stands by for the host's lock


def worker_exit(server, worker):
    from docqueue_app.queue.scheduler import get_scheduler

    app = getattr(worker, "wsgi", None)
    if app is None:
        return  # the app never loaded: no scheduler ran
    scheduler = get_scheduler(app)
    # Stop first, then say so, then wait: the running pass finishes the document
    # in hand and hands the rest of its batch back, so a restart strands nothing.
    scheduler.request_stop()
    if scheduler.enabled:
        server.log.info(
            "Stopping the queue scheduler (pid: %s): finishing the document in hand",
            worker.pid,
        )
    scheduler.shutdown()


def pre_exec(server):
    """Hand the metrics folder over to the master a binary upgrade (SIGUSR2) starts.

    gunicorn runs this in the new master's process just before it executes gunicorn
    again, with the environment gunicorn started with (cfg.env_orig): without the
    folder's variables there, the new master made a folder of its own and its
    workers counted from zero beside the old ones, so /metrics went down and up with
    the generation that answered, and the old folder was left in TMPDIR. The new
    master keeps this process's pid, so it finds the folder noted as its own.
    """
    environ = server.cfg.env_orig
    environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
    if _metrics_dir_made_here:
        environ[_MADE_BY] = str(os.getpid())
    else:
        environ.pop(_MADE_BY, None)  # the operator's folder stays the operator's


def on_exit(server):
    remove_metrics_folder(server)


def remove_metrics_folder(server):
    """Remove the metrics folder made at start (or handed over), files and all.

    Left behind, every start of the server kept one in TMPDIR, with two files of
    64 KiB allocated in full for each worker it ever started. Around a binary
    upgrade (SIGUSR2) two masters share it, and the last to exit removes it: an old
    master that started a new one leaves it to the new one, and a new master that
    exits while the old one still runs (the upgrade backed out) leaves it to the old.
    """
    handed_over = server.reexec_pid != 0
    old_master_runs = server.master_pid != 0 and server.master_pid == os.getppid()
    if _metrics_dir_made_here and not handed_over and not old_master_runs:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def child_exit(server, worker):
    """Fold the dead worker's metric files into the folder's archive files.

    prometheus-client keeps every process's files for ever: each reload, crash or
    max_requests left two more, and every scrape read them all.
    """
    from prometheus_client import multiprocess

    from docqueue_app.metrics_files import merge_dead_processes

    multiprocess.mark_process_dead(worker.pid)
    merge_dead_processes(_metrics_dir, server.log)
