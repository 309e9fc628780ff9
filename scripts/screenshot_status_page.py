"""Take the README's screenshot of the status page, docs/status-page.png, from the demo's data.

It starts the sandbox API with the 300 bookings that ``calsync demo``
serves and writes the demo's config. It runs four real syncs: a full one,
one after a booking changed, one that fails because the sandbox rejects the
client secret, and one that succeeds again. It then serves the status page
on a free loopback port, logs in with headless Chromium from Debian's
``chromium`` package through Playwright, and saves a full-page screenshot.

    .venv/bin/python scripts/screenshot_status_page.py [--output PATH] [--width PIXELS]

Needs the test extra (``pip install -e '.[test]'``) and ``/usr/bin/chromium``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "status-page.png"
CHROMIUM = "/usr/bin/chromium"
# The flags turn off Chromium's background requests (component updates, sync) and any proxy,
# so that it talks only to the loopback server it is pointed at.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-proxy-server",
]

sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from calsync.demo import DEMO_SECRET, load_demo_config, write_demo_config  # noqa: E402
from calsync.sandbox import Sandbox  # noqa: E402
from calsync.sandbox_faults import Fault  # noqa: E402
from calsync.service import Service  # noqa: E402
from calsync.wsgi import make_server, server_url, start_server_thread, stop_server  # noqa: E402


def run_demo_syncs(service: Service, sandbox: Sandbox) -> None:
    """Run the four syncs that fill the history: full, one change, a rejected secret, and a recovery."""
    service.sync_once()

    first_id = sandbox.ids()[0]
    sandbox.update(first_id, title=sandbox.get(first_id)["title"] + " (moved)")
    service.sync_once()

    rejection = sandbox.faults.add(Fault("unauthorized", endpoint="list"))
    service.sync_once()
    sandbox.faults.remove(rejection)

    service.sync_once()


def take_screenshot(base_url: str, admin_token: str, output: Path, width: int) -> None:
    with tempfile.TemporaryDirectory(prefix="calsync-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": 900},
        )
        try:
            page = context.new_page()
            page.goto(f"{base_url}/login")
            page.fill("#token", admin_token)
            page.click("button[type=submit]")
            page.wait_for_selector("#history")
            page.screenshot(path=str(output), full_page=True)
        finally:
            context.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="PNG file to write")
    parser.add_argument("--width", type=int, default=1100, help="browser window width in CSS pixels (default: 1100)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="calsync-screenshot-") as directory, \
            Sandbox(secret=DEMO_SECRET) as sandbox:
        config = load_demo_config(write_demo_config(Path(directory), sandbox.base_url, 8080))
        service = Service(config)
        run_demo_syncs(service, sandbox)

        server = make_server(service.app, "127.0.0.1", 0)
        start_server_thread(server)
        try:
            take_screenshot(server_url(server), config.server.admin_token, args.output, args.width)
        finally:
            stop_server(server)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
