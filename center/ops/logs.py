"""Structured logs for `center serve`: one line per event on stderr, JSON or text.

What goes into a line is chosen by the caller as named fields (ids, codes,
durations); free text from other libraries is kept only as their message.
Exceptions are logged as their type and stack frames, never their message:
a database error's message quotes the SQL parameters, which can hold a
member's name, address or bank account.

Configuration travels to uvicorn's worker processes as a logging dictConfig
(uvicorn applies it in every worker), so the formatters are named by import
path here.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.config
import traceback

LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOGGER_NAME = "tokenpay"
# Enough frames to find the bug; a deep recursion must not make a huge line.
MAX_STACK_FRAMES = 30
# A stray library message is cut, so one line never floods the log.
MAX_MESSAGE_CHARS = 500


def logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def log_event(event: str, level: int = logging.INFO, **fields) -> None:
    """Log one event with named fields (ids, codes, numbers only: never bodies or secrets)."""
    log = logger()
    if log.isEnabledFor(level):
        log.log(level, event, extra={"fields": fields})


def record_fields(record: logging.LogRecord) -> dict:
    """The fields of one log line, in a stable order."""
    fields = {"ts": _timestamp(record.created), "level": record.levelname.lower()}
    own = getattr(record, "fields", None)
    if isinstance(own, dict):
        fields["event"] = record.msg
        fields.update({key: value for key, value in own.items() if value is not None})
    else:
        fields["event"] = "log"
        fields["logger"] = record.name
        fields["message"] = _message(record)[:MAX_MESSAGE_CHARS]
    if record.exc_info and record.exc_info[0] is not None:
        fields["error_type"] = record.exc_info[0].__name__
        fields["stack"] = _frames(record.exc_info[2])
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record_fields(record), separators=(",", ":"), ensure_ascii=True, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        head = f"{fields.pop('ts')} {fields.pop('level').upper()} {fields.pop('event')}"
        stack = fields.pop("stack", None)
        rest = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        line = f"{head} {rest}" if rest else head
        return line + ("" if not stack else "\n  " + "\n  ".join(stack))


def logging_config(log_format: str, log_level: str) -> dict:
    """A dictConfig for the center and uvicorn: everything to stderr in one format."""
    assert log_format in LOG_FORMATS, log_format
    assert log_level in LOG_LEVELS, log_level
    formatter = {"json": JsonFormatter, "text": TextFormatter}[log_format]
    level = log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}
        },
        "loggers": {
            LOGGER_NAME: {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            # Access lines would repeat the request events, with the client address.
            "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }


def configure(log_format: str, log_level: str) -> dict:
    config = logging_config(log_format, log_level)
    logging.config.dictConfig(config)
    logging.captureWarnings(True)
    return config


def _timestamp(created_s: float) -> str:
    moment = dt.datetime.fromtimestamp(created_s, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except (TypeError, ValueError):  # a library's bad format string must not lose the line
        return str(record.msg)


def _frames(tb) -> list[str]:
    frames = traceback.extract_tb(tb)[-MAX_STACK_FRAMES:]
    return [f"{frame.filename}:{frame.lineno} in {frame.name}" for frame in frames]


def _text_value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (not text or any(c in text for c in ' ="\n')) else text
