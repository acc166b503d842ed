"""gunicorn settings for docqueue: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Every worker runs the queue scheduler; atomic claims keep them from processing
one item twice. Override anything on the command line or with GUNICORN_CMD_ARGS.
"""

import os
import shutil
import tempfile

bind = "127.0.0.1:8000"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = 4
timeout = 60
graceful_timeout = 30
accesslog = "-"

# prometheus-client adds up every worker's counters through files in this folder.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="docqueue-metrics-")
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def on_starting(server):
    # Counters from an earlier run of the server would otherwise be added in.
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)


def post_worker_init(worker):
    from docqueue_app.queue.scheduler import get_scheduler

    get_scheduler(worker.wsgi).start()


def worker_exit(server, worker):
    from docqueue_app.queue.scheduler import get_scheduler

    app = getattr(worker, "wsgi", None)
    if app is not None:
        get_scheduler(app).shutdown()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
