"""The web console at /ui/ in a real browser (Debian's headless Chromium,
driven by Playwright) against a real relay and a real agent: an agent turns
online without a reload, the connection form tests and saves, API errors show
at their fields, and no token stays in the page.

The browser tests skip when Playwright or chromium is missing; the tests of
what the relay serves need neither.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from server.connections.model import TokenAuth
from server.relay import Relay
from server.web.ui import UI_DIR
from sluice.tokens import AgentToken
from tests.conftest import AgentFactory
from tests.support.api import InternalAPI
from tests.support.capture import APIClient, remember_secret
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from playwright.async_api import Locator, Page

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
API_TOKEN = "console-api-token-" + "k" * 16  # the connection's token, typed into the form
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXPECT_MS = 15_000
REFUSED_REQUEST = "Failed to load resource: the server responded with a status of 4"


# -- what the relay serves (no browser needed) -----------------------------------------


async def test_console_files_carry_strict_security_headers(client: APIClient) -> None:
    for path in ["/ui/", "/ui/app.js", "/ui/style.css", "/ui/icon.svg"]:
        answer = await client.call("GET", path, auth=False)
        assert answer.status == 200, path
        csp = answer.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert "unsafe-eval" not in csp
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Referrer-Policy"] == "no-referrer"
    script = await client.call("GET", "/ui/app.js", auth=False)
    assert script.headers["Content-Type"].startswith(("text/javascript", "application/javascript"))


async def test_console_paths(relay: Relay, client: APIClient) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(relay.http_base + "/ui", allow_redirects=False) as resp,
    ):
        assert resp.status == 308
        assert resp.headers["Location"] == "/ui/"
    for path in ["/ui/__init__.py", "/ui/missing.js", "/ui/..%2fapi.py", "/ui/a/b.js"]:
        answer = await client.call("GET", path, auth=False)
        assert answer.status == 404, path
    # The console gives no way around the admin token.
    assert (await client.call("GET", "/v1/agents", auth=False)).status == 401


def test_console_has_no_inline_code_and_every_import_resolves() -> None:
    index = (UI_DIR / "index.html").read_text()
    for tag in re.findall(r"<script\b[^>]*>", index):
        assert "src=" in tag, tag
    assert "<style" not in index
    assert not re.search(r"<[^>]*\s(style|on[a-z]+)\s*=", index), "inline style or handler"
    for module in UI_DIR.glob("*.js"):
        text = module.read_text()
        # Values go in as text, never as markup; nothing is fetched from elsewhere.
        assert not re.search(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML", text), module.name
        assert not re.search(r"(fetch|import)\(\s*[\"'`]https?:", text), module.name
        for target in re.findall(r'from "\./([a-z_]+\.js)"', text):
            assert (UI_DIR / target).is_file(), f"{module.name} imports {target}"


# -- the browser -------------------------------------------------------------------------


@pytest.fixture
async def page(relay: Relay, tmp_path: Path) -> AsyncIterator[Page]:
    """A fresh headless Chromium profile whose every request must go to the relay."""
    async_api = pytest.importorskip(
        "playwright.async_api", reason="Playwright for Python is missing (pip install playwright)"
    )
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    errors: list[str] = []
    outside: list[str] = []

    async def only_the_relay(route: Any) -> None:
        if route.request.url.startswith(relay.http_base + "/"):
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort()

    async with async_api.async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=chromium,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            await context.route("**/*", only_the_relay)
            page = context.pages[0] if context.pages else await context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            # Refused requests (a 422 the form shows) are logged by the browser; they
            # are answers, not errors of the page's own.
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page
        finally:
            await context.close()
    assert not outside, f"the console asked for something beyond the relay: {outside}"
    errors = [e for e in errors if not e.startswith(REFUSED_REQUEST)]
    assert not errors, f"errors in the browser console: {errors}"


async def sign_in(page: Page, relay: Relay, route: str = "#/agents") -> None:
    await page.goto(f"{relay.http_base}/ui/{route}")
    await page.get_by_label("Admin token").fill(relay.admin_token)
    await page.get_by_role("button", name="Sign in").click()


async def full_page_screenshot(page: Page, name: str) -> None:
    """The whole page at laptop width, with the sticky bar where it rests."""
    height = await page.evaluate("document.documentElement.scrollHeight")
    await page.set_viewport_size({"width": 1280, "height": int(height)})
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / name))
    await page.set_viewport_size({"width": 1280, "height": 900})


async def assert_not_in_page(page: Page, secret: str) -> None:
    """Not in the markup, the text, any field's value, nor the tab's storage."""
    assert secret not in await page.content()
    assert secret not in await page.evaluate("document.body.innerText")
    values = await page.evaluate(
        "[...document.querySelectorAll('input, textarea, select')].map(e => e.value)"
    )
    assert all(secret not in value for value in values)
    storage = await page.evaluate("JSON.stringify([{...sessionStorage}, {...localStorage}])")
    assert secret not in storage


def error_at(control: Locator) -> Locator:
    """The error shown right after *control* and linked to it by aria-describedby."""
    return control.locator(
        "xpath=following-sibling::p[contains(@class, 'field-error')]"
        "[contains(concat(' ', normalize-space(preceding-sibling::*[@aria-describedby]"
        "/@aria-describedby), ' '), concat(' ', @id, ' '))]"
    )


def agent_row(page: Page, name: str) -> Locator:
    return page.locator("tr", has=page.get_by_role("rowheader", name=name, exact=True))


@pytest.mark.timeout(120)
async def test_agent_online_live_then_on_premise_connection_through_the_form(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory, page: Page
) -> None:
    from playwright.async_api import expect

    remember_secret(API_TOKEN)
    other = await client.call(
        "POST", "/v1/agents", json_body={"name": "branch-office"}, shows_token=True
    )
    remember_secret(other.body["token"])
    await sign_in(page, relay)

    # Create an agent: its token is shown once, with the commands that use it.
    await page.get_by_label("Agent name").fill("warehouse")
    await page.get_by_role("button", name="Create agent").click()
    panel = page.get_by_role("region", name="Agent warehouse created")
    await expect(panel).to_be_visible()
    shown = (await panel.locator("code.token").inner_text()).strip()
    token = AgentToken.parse(shown)
    remember_secret(str(token), token.secret)
    docker, systemd = [await pre.inner_text() for pre in await panel.locator("pre").all()]
    # The relay's SSH fingerprint, once GET /v1/relay tells it; a placeholder until then.
    info = await client.call("GET", "/v1/relay")
    fingerprint = relay.fingerprint if info.status == 200 else "SHA256:RELAY_FINGERPRINT"
    for commands, runs in [
        (docker, "docker run"),
        (systemd, "systemctl enable --now sluice-agent.service"),
    ]:
        assert shown in commands
        assert runs in commands
        assert "SLUICE_AGENT_RELAY" in commands or "relay = " in commands
        assert fingerprint in commands

    # Start the agent with the shown token: the row turns online, no reload.
    row = agent_row(page, "warehouse")
    await expect(row.locator(".badge")).to_have_text("offline")
    await page.evaluate("window.sameDocument = true")
    await start_agent([f"127.0.0.1:{api.port}"], token=token)
    await expect(row.locator(".badge")).to_have_text("online", timeout=EXPECT_MS)
    assert await page.evaluate("window.sameDocument === true"), "the page was reloaded"
    await expect(row).to_contain_text("sluice-agent/")
    await expect(row).to_contain_text("127.0.0.1:")
    await expect(agent_row(page, "branch-office").locator(".badge")).to_have_text("offline")
    await panel.get_by_role("button", name="Done: I have copied the token").click()
    await expect(panel).to_have_count(0)
    await assert_not_in_page(page, shown)
    await full_page_screenshot(page, "agents.png")

    # Resources -> Connections -> + Create connection -> the guide's form.
    await page.get_by_role("link", name="Connections").click()
    await page.get_by_role("link", name="+ Create connection").click()
    agent_select = page.get_by_label("Agent", exact=True)
    await page.get_by_label("Name", exact=True).fill("Inventory (on-prem)")
    await expect(agent_select).to_be_hidden()
    await page.get_by_label("On-premise").check()
    await expect(agent_select).to_be_visible()
    for label in ["warehouse (online)", "branch-office (offline)"]:
        await expect(agent_select.locator("option", has_text=label)).to_have_count(1)
    await agent_select.select_option(label="warehouse (online)")
    await page.get_by_label("Base URI").fill(f"{api.base}/")
    await page.get_by_role("button", name="+ Add header").first.click()
    await page.get_by_label("Header 1 name", exact=True).fill("X-Tenant")
    await page.get_by_label("Header 1 value", exact=True).fill("acme")
    await page.get_by_label("Token", exact=True).fill(API_TOKEN)
    test_section = page.get_by_role("region", name="Test the connection")
    await test_section.get_by_label("Relative URI").fill("/hello")
    await test_section.get_by_label("Path to success field in HTTP response body").fill("hello")
    await test_section.get_by_label("Success values").fill("world")

    # Test runs on the unsaved form, through the agent.
    await page.get_by_role("button", name="Test", exact=True).click()
    result = page.locator(".test-result")
    await expect(result).to_contain_text("Test passed", timeout=EXPECT_MS)
    await expect(result.locator(".result-word")).to_have_text("ok")
    await expect(result).to_contain_text("200")
    await expect(result).to_contain_text(" ms")
    assert api.seen[-1].path == "/hello"
    assert api.seen[-1].headers["Authorization"] == f"Bearer {API_TOKEN}"
    assert api.seen[-1].headers["X-Tenant"] == "acme"
    assert (await client.call("GET", "/v1/connections")).body["connections"] == []
    await full_page_screenshot(page, "connection-form.png")

    # Save: the list shows it, with its mode, agent, base URI and last test.
    await page.get_by_role("button", name="Save").click()
    await expect(page).to_have_url(re.compile(r"#/connections$"))
    listed = page.locator("tr", has=page.get_by_role("link", name="Inventory (on-prem)"))
    await expect(listed).to_contain_text("On-premise")
    await expect(listed).to_contain_text("warehouse")
    await expect(listed).to_contain_text(f"{api.base}/")
    await expect(listed.locator(".badge.ok")).to_have_text("ok")
    saved = (await client.call("GET", "/v1/connections")).body["connections"]
    assert [c["name"] for c in saved] == ["Inventory (on-prem)"]
    assert saved[0]["agent_id"] == token.agent_id
    assert saved[0]["http"]["auth"]["token_set"] is True
    assert saved[0]["last_test"]["ok"] is True
    seen = len(api.seen)
    await listed.get_by_role("button", name="Test Inventory (on-prem)").click()
    await expect(listed.locator(".badge.ok")).to_have_text("ok", timeout=EXPECT_MS)
    assert len(api.seen) == seen + 1
    await assert_not_in_page(page, API_TOKEN)

    # Editing shows the token as unchanged, never its value.
    await listed.get_by_role("link", name="Edit Inventory (on-prem)").click()
    token_field = page.get_by_label("Token", exact=True)
    await expect(token_field).to_have_attribute("placeholder", "unchanged")
    await expect(token_field).to_have_value("")
    await expect(page.get_by_label("Header 1 name", exact=True)).to_have_value("X-Tenant")
    await assert_not_in_page(page, API_TOKEN)
    # Unchanged settings test as saved.
    await page.get_by_role("button", name="Test", exact=True).click()
    await expect(page.locator(".test-result .result-word")).to_have_text("ok", timeout=EXPECT_MS)
    await assert_not_in_page(page, API_TOKEN)


@pytest.mark.timeout(120)
async def test_api_errors_show_at_their_fields(relay: Relay, client: APIClient, page: Page) -> None:
    from playwright.async_api import expect

    remember_secret(API_TOKEN)
    await sign_in(page, relay, "#/connections/new")
    await page.get_by_label("Name", exact=True).fill("Missing header name")
    await page.get_by_label("Base URI").fill("https://api.example.com/v2")
    await page.get_by_role("button", name="+ Add header").first.click()
    await page.get_by_label("Header 1 value", exact=True).fill("acme")  # no name
    await page.get_by_label("Token", exact=True).fill(API_TOKEN)
    await page.get_by_label("Header name", exact=True).fill("")
    await page.get_by_role("button", name="Save").click()

    for label, words in [
        ("Header 1 name", "HTTP token"),
        ("Header name", "required when location is 'header'"),
    ]:
        control = page.get_by_label(label, exact=True)
        await expect(control).to_have_attribute("aria-invalid", "true")
        await expect(error_at(control)).to_contain_text(words)
    # The other fields are not marked.
    await expect(page.get_by_label("Header 1 value", exact=True)).not_to_have_attribute(
        "aria-invalid", "true"
    )
    summary = page.locator(".error-summary")
    await expect(summary).to_be_focused()
    await summary.get_by_role("button", name="Header 1 name").click()
    await expect(page.get_by_label("Header 1 name", exact=True)).to_be_focused()
    assert (await client.call("GET", "/v1/connections")).body["connections"] == []

    # Test reports the same way: the ping needs its relative URI.
    await page.get_by_label("Header 1 name", exact=True).fill("X-Tenant")
    await page.get_by_label("Header name", exact=True).fill("Authorization")
    await page.get_by_role("button", name="Test", exact=True).click()
    ping_uri = page.get_by_role("region", name="Test the connection").get_by_label("Relative URI")
    await expect(ping_uri).to_have_attribute("aria-invalid", "true")
    await expect(error_at(ping_uri)).to_contain_text("required")
    await expect(page.get_by_label("Header 1 name", exact=True)).not_to_have_attribute(
        "aria-invalid", "true"
    )


@pytest.mark.timeout(120)
async def test_fields_appear_as_the_guide_says(relay: Relay, page: Page) -> None:
    from playwright.async_api import expect

    await sign_in(page, relay, "#/connections/new")
    agent = page.get_by_label("Agent", exact=True)
    await expect(agent).to_be_hidden()
    await page.get_by_label("On-premise").check()
    await expect(agent).to_be_visible()
    await page.get_by_label("Cloud").check()
    await expect(agent).to_be_hidden()

    header_name = page.get_by_label("Header name", exact=True)
    scheme = page.get_by_label("Header scheme")
    param = page.get_by_label("Parameter name")
    await expect(header_name).to_have_value("Authorization")
    await expect(scheme).to_have_value("Bearer")
    await expect(param).to_be_hidden()
    await page.get_by_label("Send token via").select_option("url")
    await expect(param).to_be_visible()
    await expect(header_name).to_be_hidden()
    await expect(scheme).to_be_hidden()

    refresh = page.get_by_role("group", name="Token refresh")
    body = page.get_by_label("HTTP request body")
    await expect(refresh).to_be_hidden()
    await page.get_by_label("Configure token refresh").check()
    await expect(refresh).to_be_visible()
    for label in [
        "HTTP method",
        "Relative URI",
        "Override media type",
        "Path to token field in HTTP response body",
    ]:
        await expect(refresh.get_by_label(label, exact=True)).to_be_visible()
    await expect(body).to_be_visible()  # POST by default
    await refresh.get_by_label("HTTP method").select_option("GET")
    await expect(body).to_be_hidden()
    await refresh.get_by_label("HTTP method").select_option("POST")
    await expect(body).to_be_visible()

    # Rows come and go; labels follow their position.
    add = page.get_by_role("button", name="+ Add header").first
    await add.click()
    await add.click()
    await page.get_by_label("Header 2 name", exact=True).fill("X-Second")
    await page.get_by_role("button", name="Remove header 1").click()
    await expect(page.get_by_label("Header 1 name", exact=True)).to_have_value("X-Second")
    await expect(page.get_by_label("Header 2 name", exact=True)).to_have_count(0)


@pytest.mark.timeout(120)
async def test_rotate_and_delete_from_the_agents_page(
    relay: Relay, client: APIClient, page: Page
) -> None:
    from playwright.async_api import expect

    created = await client.call("POST", "/v1/agents", json_body={"name": "edge"}, shows_token=True)
    remember_secret(created.body["token"])
    await sign_in(page, relay)
    row = agent_row(page, "edge")
    await row.get_by_role("button", name="Rotate token of edge").click()
    dialog = page.get_by_role("dialog", name="Rotate the token of edge?")
    await expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    await dialog.get_by_role("button", name="Rotate token").click()
    panel = page.get_by_role("region", name="New token for edge")
    rotated = (await panel.locator("code.token").inner_text()).strip()
    remember_secret(rotated)
    assert AgentToken.parse(rotated).agent_id == created.body["id"]
    assert rotated != created.body["token"]
    await panel.get_by_role("button", name="Done: I have copied the token").click()

    await row.get_by_role("button", name="Delete edge").click()
    dialog = page.get_by_role("dialog", name="Delete agent edge?")
    await dialog.press("Escape")  # Escape cancels: nothing is deleted
    await expect(dialog).to_have_count(0)
    await expect(row).to_have_count(1)
    await row.get_by_role("button", name="Delete edge").click()
    await page.get_by_role("dialog").get_by_role("button", name="Delete agent").click()
    await expect(row).to_have_count(0)
    assert (await client.call("GET", f"/v1/agents/{created.body['id']}")).status == 404


@pytest.mark.timeout(120)
async def test_admin_token_is_asked_once_per_session(relay: Relay, page: Page) -> None:
    from playwright.async_api import expect

    await page.goto(f"{relay.http_base}/ui/")
    login = page.get_by_role("dialog", name="Sign in to this relay")
    await expect(login).to_be_visible()
    await page.get_by_label("Admin token").fill("not-the-token-" + "x" * 10)
    await page.get_by_role("button", name="Sign in").click()
    await expect(login).to_contain_text("refused")
    await page.get_by_label("Admin token").fill(relay.admin_token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(login).to_be_hidden()
    await expect(page.locator(".summary")).to_contain_text("0 agents")
    await page.reload()
    await expect(page.locator(".summary")).to_contain_text("0 agents")
    await expect(login).to_be_hidden()
    await page.get_by_role("button", name="Sign out").click()
    await expect(login).to_be_visible()


@pytest.mark.timeout(120)
async def test_the_form_from_the_keyboard(relay: Relay, page: Page) -> None:
    from playwright.async_api import expect

    await sign_in(page, relay, "#/connections/new")
    name = page.get_by_label("Name", exact=True)
    await expect(name).to_be_visible()
    # Focus went to the view's heading; the next Tab is the first field.
    await page.keyboard.press("Tab")
    await expect(name).to_be_focused()
    outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "no visible focus"
    await page.keyboard.type("Typed")
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Cloud")).to_be_focused()
    await page.keyboard.press("ArrowRight")
    await expect(page.get_by_label("On-premise")).to_be_checked()
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Manage agents")).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Agent", exact=True)).to_be_focused()
    for _ in range(3):
        await page.keyboard.press("Shift+Tab")
    await expect(name).to_be_focused()
    await page.keyboard.press("Enter")  # submits: every missing field is reported
    await expect(page.locator(".error-summary")).to_be_focused()
    await expect(page.locator(".error-summary")).to_contain_text("Agent")
    await expect(page.locator(".error-summary")).to_contain_text("Base URI")


@pytest.mark.timeout(120)
async def test_editing_keeps_unchanged_secrets_and_removes_what_was_removed(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory, page: Page
) -> None:
    from playwright.async_api import expect

    refresh_secret = "refresh-secret-" + "r" * 16
    remember_secret(API_TOKEN, refresh_secret)
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    created = await client.call(
        "POST",
        "/v1/connections",
        json_body={
            "name": "Inventory",
            "mode": "on_premise",
            "agent_id": token.agent_id,
            "http": {
                "base_uri": f"{api.base}/",
                "media_type": "json",
                "auth": {
                    "type": "token",
                    "token": API_TOKEN,
                    "location": "header",
                    "scheme": "Bearer",
                },
                "encrypted": {"refresh_token": refresh_secret},
                "unencrypted": {"client_id": "abc", "region": "eu"},
                "ping": {"method": "GET", "relative_uri": "/hello"},
            },
        },
    )
    assert created.status == 201, created.text
    conn_id = created.body["id"]
    await sign_in(page, relay, f"#/connections/{conn_id}")

    secret_key = page.get_by_label("Encrypted field 1 key", exact=True)
    await expect(secret_key).to_have_value("refresh_token")
    await expect(secret_key).to_have_attribute("readonly", "")
    secret_value = page.get_by_label("Encrypted field 1 value", exact=True)
    await expect(secret_value).to_have_attribute("placeholder", "unchanged")
    for secret in (API_TOKEN, refresh_secret):
        await assert_not_in_page(page, secret)

    await page.get_by_label("Name", exact=True).fill("Inventory (edited)")
    await expect(page.get_by_label("Unencrypted field 2 key", exact=True)).to_have_value("region")
    await page.get_by_role("button", name="Remove unencrypted field 2").click()
    # Changed settings with a saved secret cannot be tested unsaved: the page says why.
    await page.get_by_role("button", name="Test", exact=True).click()
    await expect(page.locator(".test-slot")).to_contain_text("never sends saved secrets back")
    await page.get_by_role("button", name="Save").click()

    listed = page.locator("tr", has=page.get_by_role("link", name="Inventory (edited)"))
    await expect(listed.locator(".badge.ok")).to_have_text("ok", timeout=EXPECT_MS)
    view = (await client.call("GET", f"/v1/connections/{conn_id}")).body
    assert view["http"]["unencrypted"] == {"client_id": "abc"}
    assert view["http"]["encrypted"] == {"refresh_token": {"set": True}}
    handle = await relay.connections.handle(conn_id)
    assert isinstance(handle.connection.http.auth, TokenAuth)
    assert handle.connection.http.auth.token == API_TOKEN
    assert handle.connection.http.encrypted["refresh_token"] == refresh_secret
    assert api.seen[-1].headers["Authorization"] == f"Bearer {API_TOKEN}"


MAPPING_JS = """async () => {
  const doc = await import("/ui/connection_doc.js");
  const install = await import("/ui/agent_install.js");
  const saved = {name: "x", mode: "cloud", agent_id: null, http: {
    base_uri: "https://api.example.com", headers: [], media_type: "json",
    auth: {type: "token", token_set: true, location: "header", header_name: "Authorization",
           scheme: "Bearer", param_name: null, refresh: null},
    encrypted: {kept: {set: true}, dropped: {set: true}},
    unencrypted: {client_id: "abc", region: "eu"}, ping: null}};
  const edit = doc.fromView(saved);
  edit.encrypted = edit.encrypted.filter((row) => row.key !== "dropped");
  edit.unencrypted = edit.unencrypted.filter((row) => row.key !== "region");
  const url = doc.fromView(saved);
  Object.assign(url, {location: "url", paramName: "api_key", token: "new"});
  const limited = doc.fromView(saved);
  limited.ping = {...limited.ping, method: "POST", relativeUri: "/graphql",
                  body: '{"query": "{ health }"}'};
  limited.traffic = {concurrency: "3", queueTimeout: "30", healthInterval: "300",
    rateLimitOn: true, rateLimit: {failStatus: "429", failPath: "error",
      failValues: ["rate_limited"], retryHeader: "Retry-After", maxRetries: "2", maxWait: "60"}};
  const limitedDoc = doc.toDocument(limited, {forTest: true});
  const back = doc.fromView({...saved, http: {...saved.http, ...limitedDoc.http}});
  return {
    limited: limitedDoc,
    limited_values: limited.traffic,
    limited_back: back.traffic,
    patch: doc.toDocument(edit, {saved}),
    keeps: doc.keepsSavedSecrets(edit),
    url: doc.toDocument(url, {forTest: true}),
    quoted: install.shellQuote("it's"),
    docker: install.dockerCommands({token: "slc_t", relay: "r:2222", fingerprint: "SHA256:f",
                                    allow: "a:1, b:2"}),
  };
}"""


@pytest.mark.timeout(120)
async def test_form_values_map_to_the_api_document(relay: Relay, page: Page) -> None:
    await page.goto(f"{relay.http_base}/ui/")
    got = await page.evaluate(MAPPING_JS)
    patch = got["patch"]
    # PATCH is a merge patch: removed keys are null, an unchanged secret is left out.
    assert "token" not in patch["http"]["auth"]
    assert patch["http"]["encrypted"] == {"dropped": None}
    assert patch["http"]["unencrypted"] == {"client_id": "abc", "region": None}
    assert patch["http"]["ping"] is None
    assert patch["http"]["auth"]["scheme"] == "Bearer"
    assert got["keeps"] is True
    url = got["url"]["http"]
    assert url["auth"]["token"] == "new"
    assert url["auth"]["header_name"] is None
    assert url["auth"]["scheme"] is None
    assert url["auth"]["param_name"] == "api_key"
    assert url["ping"] == {
        "method": "GET",
        "relative_uri": "",
        "success_path": None,
        "success_values": [],
        "body": None,
        "fail_path": None,
        "fail_values": [],
        "error_path": None,
    }
    # Traffic settings: left empty, nothing is capped, limited or scheduled; a PATCH
    # clears what was removed.
    assert (url["concurrency_level"], url["health"], url["rate_limit"]) == (None, None, None)
    assert url["queue_timeout_seconds"] == 30
    limited = got["limited"]["http"]
    assert limited["rate_limit"] == {
        "fail_status": 429,
        "fail_path": "error",
        "fail_values": ["rate_limited"],
        "retry_header": "Retry-After",
        "max_retries": 2,
        "max_wait_seconds": 60,
    }
    assert limited["concurrency_level"] == 3
    assert limited["health"] == {"interval_seconds": 300}
    assert limited["ping"]["body"] == '{"query": "{ health }"}'
    assert got["limited_back"] == got["limited_values"]
    assert got["quoted"] == "'it'\\''s'"
    assert "-e SLUICE_AGENT_ALLOW='a:1,b:2'" in got["docker"]
    assert "printf '%s' 'slc_t' > /etc/sluice/agent.token" in got["docker"]


@pytest.mark.timeout(120)
async def test_health_traffic_charts_and_the_debug_tab(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory, page: Page
) -> None:
    from playwright.async_api import expect

    remember_secret(API_TOKEN)
    proc, token = await start_agent([f"127.0.0.1:{api.port}"])
    created = await client.call(
        "POST",
        "/v1/connections",
        json_body={
            "name": "Inventory",
            "mode": "on_premise",
            "agent_id": token.agent_id,
            "http": {
                "base_uri": api.base,
                "auth": {"type": "token", "token": API_TOKEN, "scheme": "Bearer"},
                "ping": {"method": "GET", "relative_uri": "/hello"},
            },
        },
    )
    conn_id = created.body["id"]
    assert (await client.call("POST", f"/v1/connections/{conn_id}/test")).body["ok"] is True
    # All three requests in one minute, so the chart's peak minute holds them all.
    await wait_until(lambda: time.time() % 60 < 50, timeout=15, what="a fresh minute")
    for _ in range(3):
        proxied = await client.call("GET", f"/v1/connections/{conn_id}/proxy/hello")
        assert proxied.status == 200

    await sign_in(page, relay, "#/connections")
    row = page.locator("tr", has=page.get_by_role("rowheader", name="Inventory", exact=True))
    await expect(row.locator("td[data-label='Health'] .badge")).to_have_text("online")

    await row.get_by_role("link", name="Activity of Inventory").click()
    await expect(page.get_by_role("heading", name="Activity: Inventory")).to_be_visible()
    health = page.get_by_role("region", name="Health")
    await expect(health.locator(".badge")).to_have_text("online")
    charts = page.locator("figure.chart-card")
    await expect(charts).to_have_count(4)
    requests = page.get_by_role(
        "img", name=re.compile(r"^Requests per minute: latest \d+ req.min, peak 3 req.min$")
    )
    await expect(requests).to_be_visible()
    assert await requests.locator("polyline").count() == 1
    await expect(
        page.get_by_role("img", name=re.compile(r"^Latency p99: latest \d+ ms"))
    ).to_be_visible()
    await full_page_screenshot(page, "connection-traffic.png")

    await page.get_by_role("tab", name="Debug").click()
    await expect(page.get_by_text("Not recording.")).to_be_visible()
    await page.get_by_role("button", name="Start debug log").click()
    await expect(page.get_by_text(re.compile("^Recording until"))).to_be_visible()
    proxied = await client.call("GET", f"/v1/connections/{conn_id}/proxy/hello?from=console")
    assert proxied.status == 200
    entry = page.locator("details.debug-entry").first
    await expect(entry).to_contain_text("/hello?from=console")
    await entry.locator("summary").click()
    request = entry.get_by_role("region", name="Request")
    await expect(request).to_contain_text("Authorization: ***")
    await expect(entry.get_by_role("region", name="Answer")).to_contain_text('"hello": "world"')
    await full_page_screenshot(page, "connection-activity.png")
    await assert_not_in_page(page, API_TOKEN)
    await page.get_by_role("button", name="Stop debug log").click()
    await expect(page.get_by_text("Not recording (the window ended).")).to_be_visible()

    # The agent stops: the list shows the connection offline, with the reason, unreloaded.
    await page.get_by_role("link", name="← Connections").click()
    await expect(row.locator("td[data-label='Health'] .badge")).to_have_text("online")
    await proc.stop()
    await expect(row.locator("td[data-label='Health'] .badge")).to_have_text("offline")
    await expect(row.locator("td[data-label='Health']")).to_contain_text("agent_offline")


@pytest.mark.timeout(120)
async def test_traffic_and_health_settings_through_the_form(
    relay: Relay, client: APIClient, page: Page
) -> None:
    from playwright.async_api import expect

    remember_secret(API_TOKEN)
    await sign_in(page, relay, "#/connections/new")
    await page.get_by_label("Name", exact=True).fill("Fragile")
    await page.get_by_label("Base URI").fill("https://api.example.com/v2")
    await page.get_by_label("Token", exact=True).fill(API_TOKEN)
    rate_limit_group = page.get_by_role("group", name="Rate limits")
    await expect(rate_limit_group).to_be_hidden()
    await page.get_by_label("Concurrency level").fill("3")
    await page.get_by_label("Health check every (seconds)").fill("5")
    await page.get_by_label("Wait out rate limits").check()
    await expect(rate_limit_group).to_be_visible()
    await page.get_by_label("Most retries").fill("2")
    await page.get_by_role("button", name="Save").click()
    interval = page.get_by_label("Health check every (seconds)")
    await expect(interval).to_have_attribute("aria-invalid", "true")
    await expect(error_at(interval)).to_contain_text("at least 30 seconds")
    assert (await client.call("GET", "/v1/connections")).body["connections"] == []

    await interval.fill("300")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("heading", name="Connections")).to_be_visible()
    (saved,) = (await client.call("GET", "/v1/connections")).body["connections"]
    http = saved["http"]
    assert http["concurrency_level"] == 3
    assert http["health"] == {"interval_seconds": 300}
    assert http["rate_limit"]["max_retries"] == 2
    assert http["rate_limit"]["fail_status"] == 429
