"""One log line per request (logger `pdserve.requests`), plain text or JSON, and the logging
setup of a served gateway.

`gateway.log_format: json` (or `pdserve up|gateway --log-format json`) makes every pdserve and
uvicorn log line a JSON object, a request's with its fields (`RequestRecord`); `text`, the
default, keeps plain lines, a request's as `key=value` pairs. Request lines are INFO: in text
they show at the server's log level (`pdserve gateway`: info, `pdserve up`: warning, so none),
in JSON always.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

LogFormat = Literal["text", "json"]
REQUEST_LOGGER = "pdserve.requests"


@dataclass
class RequestRecord:
    """What one request did, as its log line shows it."""

    id: str
    model: str
    route: str  # disaggregated | local | none (refused before it was placed)
    reason: str = ""  # the route's cause (`policies.types.RouteCause`), e.g. short_prompt
    detail: str = ""  # the route rule's reason with its numbers
    status: str = ""  # the HTTP status the client got ("499": it went away first)
    pools: list[str] = field(default_factory=list)  # in hop order: prefill, then decode
    replicas: list[str] = field(default_factory=list)
    fallback: str | None = None  # why the prefill hop fell back to local prefill
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_s: float | None = None
    prefill_s: float | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    trace_id: str | None = None

    def fields(self) -> dict[str, Any]:
        values = asdict(self)
        for key in ("queue_s", "prefill_s", "ttft_s", "e2e_s"):
            if values[key] is not None:
                values[key] = round(values[key], 6)
        return {k: v for k, v in values.items() if v is not None and v != ""}

    def text(self) -> str:
        parts = []
        for key, value in self.fields().items():
            shown = ",".join(value) if isinstance(value, list) else value
            parts.append(f"{key}={json.dumps(shown) if key == 'detail' else shown}")
        return "request " + " ".join(parts)


class RequestLog:
    """Writes a request's record once it has ended; nothing is built when the logger is off."""

    def __init__(self, log_format: LogFormat = "text") -> None:
        self.logger = logging.getLogger(REQUEST_LOGGER)
        self.json = log_format == "json"

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def write(self, record: RequestRecord) -> None:
        if self.json:
            self.logger.info("request", extra={"request": record.fields()})
        else:
            self.logger.info(record.text())


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object; a request's record carries its fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        request = getattr(record, "request", None)
        if isinstance(request, dict):
            line["event"] = "request"
            line.update(request)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def logging_config(log_format: LogFormat, level: str = "info") -> dict[str, Any]:
    """uvicorn's `log_config`: its loggers and pdserve's to stderr, in one format."""
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"}
        if log_format == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "pdserve",
        "stream": "ext://sys.stderr",
    }
    requests_level = "INFO" if log_format == "json" else level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"pdserve": formatter},
        "handlers": {"pdserve": handler},
        "loggers": {
            "uvicorn": {"handlers": ["pdserve"], "level": level.upper(), "propagate": False},
            "pdserve": {"handlers": ["pdserve"], "level": level.upper(), "propagate": False},
            REQUEST_LOGGER: {"level": requests_level},
        },
    }
