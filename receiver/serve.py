"""Running the app under gunicorn, the standard way: our defaults, then a `gunicorn.conf.py` (given with
--config, or found in the working directory), then GUNICORN_CMD_ARGS, then `serve`'s own --bind/--workers;
WEB_CONCURRENCY sets the worker count when nothing else does. Two things are always ours: no control socket
(several receivers may run on one machine; gunicorn's default socket path is machine-global) and the metrics
hook below.

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

from gunicorn.app.base import Application
from gunicorn.config import get_default_config_file

from billing import logs
from billing.config import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_WORKERS = 2
# Well above the handful of stalled clients anyone can open, so a real webhook always finds a free thread
# (receiver/worker.py bounds how long each of them can hold one); idle threads cost nothing.
DEFAULT_THREADS = 16


class ReceiverServer(Application):
    def __init__(
        self,
        settings: Settings,
        bind: str | None,
        workers: int | None,
        metrics_dir: str,
        config_file: str | None = None,
        access_log: bool = True,
    ):
        self.settings = settings
        self.metrics_dir = metrics_dir
        self.config_file = config_file
        self.defaults = {
            "bind": f"0.0.0.0:{settings.port}",
            "workers": int(os.environ.get("WEB_CONCURRENCY") or DEFAULT_WORKERS),
            "worker_class": "receiver.worker.BoundedThreadWorker",  # gthread with bounded reads
            "threads": DEFAULT_THREADS,
            "timeout": 30,
            "graceful_timeout": 20,
            "keepalive": 5,
            "accesslog": "-" if access_log else None,
            "logger_class": "receiver.access_log.ReceiverLogger",  # no line per webhook answered 200
            "errorlog": "-",
            "loglevel": logs.level().lower(),
            # gunicorn's default format, then the worker's pid: which worker answered.
            "access_log_format": '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(p)s',
        }
        self.explicit = {key: value for key, value in (("bind", bind), ("workers", workers)) if value is not None}
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.defaults.items():
            self.cfg.set(key, value)
        parser = self.cfg.parser()
        env_args = parser.parse_args(self.cfg.get_cmd_args_from_env())
        config_file = self.config_file or env_args.config or get_default_config_file()
        if config_file:
            self.load_config_from_file(config_file)
        for key, value in vars(env_args).items():
            if value is not None and key not in ("args", "config"):
                self.cfg.set(key.lower(), value)
        for key, value in self.explicit.items():
            self.cfg.set(key, value)
        self.cfg.set("control_socket_disable", True)
        user_child_exit = self.cfg.child_exit
        self.cfg.set("child_exit", lambda arbiter, worker: self.child_exit(arbiter, worker, user_child_exit))
        if not self.cfg.logconfig_dict and not self.cfg.logconfig and not self.cfg.logconfig_json:
            self.cfg.set("logconfig_dict", logs.gunicorn_logconfig(self.cfg.loglevel, access=bool(self.cfg.accesslog)))

    def init(self, parser, opts, args):  # Application's hook for a command line; ours is click's
        return None

    def load(self):
        from receiver import create_app

        return create_app(self.settings)

    def child_exit(self, arbiter, worker, user_hook=None) -> None:
        """In the master, once a worker has exited: drop its files of live gauges (its counters and
        histograms stay, so the totals never go down when a worker is replaced). Never raises: an
        error in this hook would stop gunicorn from replacing the worker."""
        from prometheus_client import multiprocess

        try:
            multiprocess.mark_process_dead(worker.pid, self.metrics_dir)
        except OSError as exc:
            arbiter.log.warning("metrics files of worker %s not removed: %s", worker.pid, exc)
        if user_hook is not None:
            user_hook(arbiter, worker)


def prepare_metrics_dir() -> str:
    """Create this server's multiprocess directory and point prometheus_client at it. An inherited
    PROMETHEUS_MULTIPROC_DIR is replaced: it may be another server's."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError(
            "prometheus_client was imported before the receiver set PROMETHEUS_MULTIPROC_DIR: "
            "its metrics would not be summed across gunicorn workers"
        )
    path = tempfile.mkdtemp(prefix="billing-receiver-metrics-")  # new and empty, readable by us alone
    os.environ[MULTIPROC_ENV] = path
    return path


def serve(
    settings: Settings,
    bind: str | None = None,
    workers: int | None = None,
    config_file: str | None = None,
    access_log: bool = True,
) -> None:
    metrics_dir = prepare_metrics_dir()
    master = os.getpid()
    try:
        ReceiverServer(settings, bind, workers, metrics_dir, config_file, access_log).run()
    finally:
        # A worker leaves through here too (gunicorn forks it inside run()): only the master removes.
        if os.getpid() == master:
            shutil.rmtree(metrics_dir, ignore_errors=True)
