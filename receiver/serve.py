"""Running the app under gunicorn, configured in code so `python -m receiver serve` needs no config file.

Metrics: every gunicorn worker is a process of its own, so prometheus_client runs in multiprocess
mode: each worker writes its values to files in a directory and /metrics sums the files. That
directory is created here, fresh and private to this server (several receivers may run on one
machine; sharing one would mix their counts), and removed when the server stops. prometheus_client
decides how to keep values when it is first imported, so PROMETHEUS_MULTIPROC_DIR has to be in the
environment by then: serve() sets it before the workers are forked, and the workers first import
prometheus_client when they load the app (create_app imports the blueprints; no preload_app)."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

from gunicorn.app.base import BaseApplication

from models.config import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class ReceiverServer(BaseApplication):
    def __init__(self, settings: Settings, bind: str, workers: int, metrics_dir: str):
        self.settings = settings
        self.metrics_dir = metrics_dir
        self.options = {
            "bind": bind,
            "workers": workers,
            "worker_class": "gthread",
            "threads": 4,
            "timeout": 30,
            "graceful_timeout": 20,
            "keepalive": 5,
            # Several receivers may run on one machine: nothing machine-global, like gunicorn's
            # default control socket path.
            "control_socket_disable": True,
            "accesslog": "-",
            "errorlog": "-",
            # gunicorn's default format, then the worker's pid: which worker answered.
            "access_log_format": '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(p)s',
            "child_exit": self.child_exit,
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self):
        from receiver import create_app

        return create_app(self.settings)

    def child_exit(self, arbiter, worker) -> None:
        """In the master, once a worker has exited: drop its files of live gauges (its counters and
        histograms stay, so the totals never go down when a worker is replaced). Never raises: an
        error in this hook would stop gunicorn from replacing the worker."""
        from prometheus_client import multiprocess

        try:
            multiprocess.mark_process_dead(worker.pid, self.metrics_dir)
        except OSError as exc:
            arbiter.log.warning("metrics files of worker %s not removed: %s", worker.pid, exc)


def prepare_metrics_dir() -> str:
    """Create this server's multiprocess directory and point prometheus_client at it. An inherited
    PROMETHEUS_MULTIPROC_DIR is replaced: it may be another server's."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the receiver set PROMETHEUS_MULTIPROC_DIR: "
                           "its metrics would not be summed across gunicorn workers")
    path = tempfile.mkdtemp(prefix="billing-receiver-metrics-")  # new and empty, readable by us alone
    os.environ[MULTIPROC_ENV] = path
    return path


def serve(settings: Settings, bind: str, workers: int) -> None:
    metrics_dir = prepare_metrics_dir()
    master = os.getpid()
    try:
        ReceiverServer(settings, bind, workers, metrics_dir).run()
    finally:
        # A worker leaves through here too (gunicorn forks it inside run()): only the master removes.
        if os.getpid() == master:
            shutil.rmtree(metrics_dir, ignore_errors=True)
