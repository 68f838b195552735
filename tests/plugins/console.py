"""pytest plugin: the web console in-process on a free port, pointed at the session's
services, and a headless Chromium (Debian's, never a downloaded build) per test module.

With `--secure-stack` the console gets the session's CA but no token: `console_page` signs in
through the token form, as a person would, and every service checks that token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from infra.local.ports import free_port
from services.console.app import create_app
from services.console.clients import Clients
from services.console.server import ConsoleSettings
from tests.security import StackSecurity

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "console"
START_TIMEOUT_S = 60.0


class ConsoleServer:
    """uvicorn on a daemon thread; `stop` asks it to exit and waits."""

    def __init__(self, app: Any, port: int) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the console did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)


def console_settings(addresses: dict[str, str], security: StackSecurity) -> ConsoleSettings:
    client = {"tls_ca_file": security.ca_file} if security.enabled else {}
    return ConsoleSettings(
        http_port=0,
        registry_addr=addresses["registry"],
        materialization_addr=addresses["materialization"],
        serving_addr=addresses["serving"],
        recommend_addr=addresses["recommend"],
        client=client,
    )


@pytest.fixture(scope="session")
def console_url(
    registry_address: str,
    materialization_address: str,
    serving_address: str,
    recommend_address: str,
    stack_security: StackSecurity,
) -> Iterator[str]:
    addresses = {
        "registry": registry_address,
        "materialization": materialization_address,
        "serving": serving_address,
        "recommend": recommend_address,
    }
    settings = console_settings(addresses, stack_security)
    clients = Clients(settings.addresses(), settings.client)
    server = ConsoleServer(create_app(settings, clients), free_port())
    server.start()
    yield server.url
    server.stop()
    clients.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module (`make browser` installs Debian's)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


@pytest.fixture
def console_page(browser: Any, console_url: str, stack_security: StackSecurity) -> Iterator[Any]:
    """A fresh browser context on the console, signed in when the stack requires a token."""
    context = browser.new_context(base_url=console_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    # The page's own errors end up in the test's output, where a failure shows them.
    page.on("pageerror", lambda error: print(f"page error: {error}"))
    page.on("console", lambda message: print(f"console {message.type}: {message.text}"))
    if stack_security.enabled:
        sign_in(page, stack_security.token)
    yield page
    context.close()


def sign_in(page: Any, token: str) -> None:
    page.goto("/login")
    page.fill("input[name=token]", token)
    page.click("form.login button[type=submit]")
    page.wait_for_url(lambda url: "/login" not in url)


def artifact(name: str) -> Path:
    """Where a test keeps a screenshot (tests/artifacts/console/, ignored by git)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name
