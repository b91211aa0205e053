"""One log format for the receiver (gunicorn included), the consumer and the CLI.

LOG_LEVEL (default INFO) applies to all of them. LOG_FORMAT=json writes one JSON object per line for a log
pipeline: `time`, `level`, `logger`, `message`, and the fields a line is about where it has them (`event_id`,
`entry_id`, `event_type`, `consumer`, `community_id`, `outcome`), passed with `extra=`. No line at INFO or above
carries a secret, a token or a payload body: callers log ids, never bodies."""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.config
import os
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FIELDS = ("event_id", "entry_id", "event_type", "consumer", "community_id", "outcome")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class ConsumerName(logging.Filter):
    """Stamps every record with the consumer's name, so each line says which worker wrote it."""

    def __init__(self, name: str):
        super().__init__()
        self.consumer = name

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "consumer", None) is None:
            record.consumer = self.consumer
        return True


def level() -> str:
    value = os.environ.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
    return value if value in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") else "INFO"


def json_wanted() -> bool:
    return os.environ.get("LOG_FORMAT", "text").strip().lower() == "json"


def formatter_config() -> dict[str, Any]:
    if json_wanted():
        return {"()": f"{__name__}.JsonFormatter"}
    return {"format": TEXT_FORMAT}


def configure(consumer: str | None = None) -> None:
    """Log to stderr at LOG_LEVEL in LOG_FORMAT (text or json); `consumer` names the worker in every line."""
    handler: dict[str, Any] = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter_config()},
        "handlers": {"default": handler},
        "root": {"level": level(), "handlers": ["default"]},
    }
    if consumer:
        config["filters"] = {"consumer": {"()": f"{__name__}.ConsumerName", "name": consumer}}
        handler["filters"] = ["consumer"]
    logging.config.dictConfig(config)


def gunicorn_logconfig(error_level: str | None = None, access: bool = True) -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: its error and access logs in our format; the error log at gunicorn's own
    --log-level when one is given (GUNICORN_CMD_ARGS), else LOG_LEVEL; the access log dropped when off
    (with a logconfig_dict gunicorn always writes it, so it is silenced here)."""
    error_level = (error_level or level()).upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter_config()},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
        },
        "root": {"level": level(), "handlers": ["default"]},
        "loggers": {
            "gunicorn.error": {"level": error_level, "handlers": ["default"], "propagate": False},
            "gunicorn.access": {
                "level": "INFO" if access else "CRITICAL",
                "handlers": ["default"] if access else [],
                "propagate": False,
            },
        },
    }
