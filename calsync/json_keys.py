"""JSON decoding that shares key strings between objects.

A sync keeps every booking in memory, and ``json.loads`` gives each object
its own copies of its key strings, about a third of a decoded booking. The
decoder here interns the keys, so every booking shares one string per key
name.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _interned_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {sys.intern(key): value for key, value in pairs}


_DECODER = json.JSONDecoder(object_pairs_hook=_interned_keys)


def loads(document: str | bytes) -> Any:
    """Decode a JSON document like ``json.loads``, with every object key interned.

    Bytes are decoded as UTF-8, the encoding JSON exchanged between systems
    must use (RFC 8259). Raises ValueError for a document that is not JSON.
    """
    text = document.decode("utf-8") if isinstance(document, bytes) else document
    return _DECODER.decode(text)
