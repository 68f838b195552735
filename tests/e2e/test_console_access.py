"""Access to the console: with tokens on (`--secure-stack`) it asks for one, keeps it in an
HTTP-only session cookie, sends it on every call and never shows it; the services decide."""

from __future__ import annotations

import pytest

from tests.plugins.console import sign_in


@pytest.fixture
def fresh_page(browser, console_url):
    context = browser.new_context(base_url=console_url)
    yield context.new_page()
    context.close()


def test_without_tokens_on_the_console_opens_without_signing_in(fresh_page, stack_security):
    if stack_security.enabled:
        pytest.skip("tokens are on in this run: the next tests cover it")
    fresh_page.goto("/registry")
    assert fresh_page.url.endswith("/registry")
    assert fresh_page.locator("h1").inner_text() == "Projects"


def test_with_tokens_on_a_page_asks_for_one_and_a_wrong_one_is_refused(fresh_page, stack_security):
    if not stack_security.enabled:
        pytest.skip("tokens are off in this run (make test-e2e-secure turns them on)")
    page = fresh_page
    page.goto("/scenes")
    assert "/login?next=/scenes" in page.url
    page.fill("input[name=token]", "not-the-token")
    page.click("form.login button[type=submit]")
    refusal = page.locator(".error").inner_text()
    assert "The registry refused this token" in refusal

    sign_in(page, stack_security.token)
    page.goto("/scenes")
    assert page.url.endswith("/scenes")
    assert stack_security.token not in page.content()
    [session] = [c for c in page.context.cookies() if c["name"] == "recstack_console"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"

    page.click("form.logout button")
    page.goto("/scenes")
    assert "/login" in page.url
