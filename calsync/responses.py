"""HTTP responses shared by the feed server and the status page: the ``Response`` value and plain builders."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

NOT_FOUND_BODY = b"Not found\n"
READ_METHODS = "GET, HEAD"


@dataclass
class Response:
    """An HTTP response. ``body`` is left out of the response to a HEAD request."""

    status: HTTPStatus
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def text_response(status: HTTPStatus, text: str, extra: Iterable[tuple[str, str]] = ()) -> Response:
    body = text.encode("utf-8")
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Cache-Control", "no-store"),
        *extra,
    ]
    return Response(status, headers, body)


def json_response(status: HTTPStatus, document: dict[str, Any], extra: Iterable[tuple[str, str]] = ()) -> Response:
    body = (json.dumps(document) + "\n").encode("utf-8")
    headers = [
        ("Content-Type", "application/json"),
        ("Cache-Control", "no-store"),
        *extra,
    ]
    return Response(status, headers, body)


def not_found() -> Response:
    return text_response(HTTPStatus.NOT_FOUND, NOT_FOUND_BODY.decode())


def method_not_allowed(allowed: str) -> Response:
    return text_response(HTTPStatus.METHOD_NOT_ALLOWED, "Method not allowed\n", [("Allow", allowed)])


def require_read(method: str) -> Response | None:
    """Return a 405 response unless ``method`` is GET or HEAD."""
    return None if method in ("GET", "HEAD") else method_not_allowed(READ_METHODS)
