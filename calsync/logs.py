"""Logging set-up for the command line: text or JSON lines on stderr, with secrets redacted.

JSON lines carry ``timestamp``, ``level``, ``logger`` and ``message``, plus
any structured fields a caller passes as ``extra={"fields": {...}}`` (the
sync summary passes its counters), so log collectors need no parsing.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

REDACTED = "********"
FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
# Only the handler of this name is replaced on a second call, so handlers that
# others installed (a test runner's, an embedding program's) stay.
HANDLER_NAME = "calsync-stderr"


class RedactingFormatter(logging.Formatter):
    """A text formatter whose output, traceback included, never shows a registered secret."""

    def format(self, record: logging.LogRecord) -> str:
        return _redactor.redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object on one line, secrets redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return _redactor.redact(self._format_json(record))

    def _format_json(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({key: value for key, value in fields.items() if key not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class RedactSecrets(logging.Filter):
    """Replace every configured secret in a record's final message with ``REDACTED``.

    calsync never passes a secret to a log call on purpose. This filter and
    the formatters are the second line of defence against a secret inside an
    exception text, a traceback or a URL from a library.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = ()
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = tuple(sorted({secret for secret in secrets if len(secret) >= 4}, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_redactor = RedactSecrets()


def configure_logging(level: str = "info", log_format: str = "text") -> None:
    """Send calsync's log records to stderr in the chosen format; call once, from the entry point."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    handler.addFilter(_redactor)
    handler.set_name(HANDLER_NAME)

    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == HANDLER_NAME:
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # APScheduler logs every job run at INFO, and urllib3 logs each retry that calsync's
    # client already logs; calsync logs the events that matter itself.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("urllib3").setLevel(max(logging.ERROR, root.level))


def redact(secrets: Iterable[str]) -> None:
    """Register the secrets of a loaded config so that no log line can show them."""
    _redactor.update(secrets)
