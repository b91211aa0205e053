"""Running the app under gunicorn, configured in code so `python -m receiver serve` needs no config file."""
from __future__ import annotations

from gunicorn.app.base import BaseApplication

from models.config import Settings


class ReceiverServer(BaseApplication):
    def __init__(self, settings: Settings, bind: str, workers: int):
        self.settings = settings
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
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self):
        from receiver import create_app

        return create_app(self.settings)


def serve(settings: Settings, bind: str, workers: int) -> None:
    ReceiverServer(settings, bind, workers).run()
