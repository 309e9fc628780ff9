"""The null client: the requests of the lower bound and nothing else.

It sends exactly the requests calsync sent in one sync, in the same shape:
page 1 alone, then pages 2..n at ``concurrency`` requests in flight, then
the same details, again at ``concurrency``. It uses the same library
(requests, with one connection pool of ``concurrency`` connections) and
reads every body but parses none. Its wall time is therefore the floor for
this machine and this sandbox, server work included.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import requests
from requests.adapters import HTTPAdapter

from calsync.cashfin import DETAILS_PATH, LIST_PATH

TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Replay:
    """The requests to replay: list targets in page order, then details targets, each a path with query."""

    list_targets: list[str]
    details_targets: list[str]


def replay_from_log(request_log: list[tuple[str, str]]) -> Replay:
    """Collect the GET targets of a sandbox request log, list pages sorted by page number."""
    list_targets = [target for method, target in request_log if method == "GET" and _path(target) == LIST_PATH]
    details_targets = [
        target for method, target in request_log if method == "GET" and _path(target).startswith(DETAILS_PATH)
    ]
    list_targets.sort(key=_page_number)
    return Replay(list_targets, details_targets)


def replay(base_url: str, secret: str, requests_to_send: Replay, concurrency: int) -> float:
    """Send the requests and return the wall seconds from the first request to the last body read."""
    with _session(secret, concurrency) as session:
        started = time.perf_counter()
        targets = requests_to_send.list_targets
        if targets:
            _fetch(session, base_url + targets[0])
        _fetch_all(session, base_url, targets[1:], concurrency)
        _fetch_all(session, base_url, requests_to_send.details_targets, concurrency)
        return time.perf_counter() - started


def _session(secret: str, concurrency: int) -> requests.Session:
    session = requests.Session()
    # The sandbox is on loopback, so no proxy from the environment may come between.
    session.trust_env = False
    adapter = HTTPAdapter(max_retries=0, pool_connections=1, pool_maxsize=concurrency)
    session.mount("http://", adapter)
    session.headers["Authorization"] = secret
    session.headers["Accept"] = "application/json"
    return session


def _fetch_all(session: requests.Session, base_url: str, targets: list[str], concurrency: int) -> None:
    if not targets:
        return
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="null-client") as pool:
        for _ in pool.map(lambda target: _fetch(session, base_url + target), targets):
            pass


def _fetch(session: requests.Session, url: str) -> int:
    response = session.get(url, timeout=TIMEOUT_SECONDS)
    if response.status_code != 200:
        raise RuntimeError(f"null client: GET {url} returned HTTP {response.status_code}, expected 200")
    return len(response.content)


def _path(target: str) -> str:
    return urlsplit(target).path


def _page_number(target: str) -> int:
    pages = parse_qs(urlsplit(target).query).get("page", ["1"])
    return int(pages[0])
