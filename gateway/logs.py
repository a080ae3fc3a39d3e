"""Log output: text for people or one JSON object per line, with request ids, keys scrubbed."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import TextIO

import msgspec

from gateway.request_id import current_request_id

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"
# Tenant keys (lg-<key id>-<secret>), generated admin keys, and any bearer credential.
_SECRETS = re.compile(
    r"(lg-[0-9a-f]{16}-)[A-Za-z0-9_-]+|(lg-admin-)[A-Za-z0-9_-]+|((?i:bearer)\s+)\S+"
)


def scrub(text: str) -> str:
    """The text with every credential's secret part replaced by ***."""
    if "lg-" not in text and "earer" not in text:
        return text
    return _SECRETS.sub(lambda m: (m.group(1) or m.group(2) or m.group(3)) + "***", text)


class ScrubSecrets(logging.Filter):
    """Rewrites each record's message (and traceback) without credentials."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


class JsonLine(msgspec.Struct, omit_defaults=True):
    time: str
    level: str
    logger: str
    message: str
    request_id: str | None = None
    exception: str | None = None


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, request_id."""

    _encoder = msgspec.json.Encoder()

    def format(self, record: logging.LogRecord) -> str:
        exception = record.exc_text
        if record.exc_info and not exception:
            exception = self.formatException(record.exc_info)
        line = JsonLine(
            time=datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            level=record.levelname,
            logger=record.name,
            message=record.getMessage(),
            request_id=current_request_id.get(),
            exception=exception,
        )
        return self._encoder.encode(line).decode()


class TextFormatter(logging.Formatter):
    """The human format, with `[request id]` after the logger's name inside a request."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        rid = current_request_id.get()
        record.request_tag = f" [{rid}]" if rid else ""
        return super().format(record)


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """Send every logger's records to `stream` (stderr) in `fmt` ('text' or 'json')."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ScrubSecrets())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call otherwise
    return handler
