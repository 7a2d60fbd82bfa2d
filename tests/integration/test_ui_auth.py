"""The console's auth types and import dialog in a real browser (Debian's
chromium, driven by Playwright) against a real relay: each type shows its
fields, saves the document the API expects, shows API errors at the field,
and no secret stays in the page; the import dialog previews what carries over
and what does not, refuses what it cannot import, and creates."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import pytest
import trustme

from server.relay import Relay
from tests.integration.test_ui import EXPECT_MS, assert_not_in_page, error_at, page, sign_in
from tests.support.capture import APIClient, remember_secret

if TYPE_CHECKING:
    from playwright.async_api import Page

__all__ = ["page"]  # the browser fixture, shared with test_ui

PASSWORD = "ui-password-" + "b" * 12
CLIENT_SECRET = "ui-client-secret-" + "o" * 12
REFRESH = "ui-refresh-" + "r" * 12


async def _new_connection(page: Page, relay: Relay, name: str, auth_type: str) -> None:
    from playwright.async_api import expect

    await page.goto(f"{relay.http_base}/ui/#/connections/new")
    await expect(page.get_by_role("heading", name="Create connection")).to_be_visible()
    await page.get_by_label("Name", exact=True).fill(name)
    await page.get_by_label("Base URI").fill("https://api.example.com/v1")
    await page.get_by_label("Auth type").select_option(auth_type)


async def _saved(client: APIClient, name: str) -> dict[str, Any]:
    connections = (await client.call("GET", "/v1/connections")).body["connections"]
    (found,) = [c for c in connections if c["name"] == name]
    return dict(found)


@pytest.mark.timeout(120)
async def test_each_auth_type_shows_its_fields_and_saves(
    relay: Relay, client: APIClient, page: Page
) -> None:
    from playwright.async_api import expect

    remember_secret(PASSWORD, CLIENT_SECRET, REFRESH)
    await sign_in(page, relay, "#/connections")
    await _new_connection(page, relay, "Basic one", "basic")
    token = page.get_by_label("Token", exact=True)
    username = page.get_by_label("Username", exact=True)
    password = page.get_by_label("Password", exact=True)
    await expect(token).to_be_hidden()
    await expect(page.get_by_label("Send token via")).to_be_hidden()
    await expect(username).to_be_visible()
    await expect(password).to_have_attribute("type", "password")
    await expect(page.get_by_label("Token URI")).to_be_hidden()
    await username.fill("svc")
    await password.fill(PASSWORD)
    await page.get_by_role("button", name="Save").click()
    await expect(page.locator("tr", has_text="Basic one")).to_be_visible(timeout=EXPECT_MS)
    saved = await _saved(client, "Basic one")
    assert saved["http"]["auth"] == {"type": "basic", "username": "svc", "password_set": True}

    # Editing shows the password as unchanged and keeps it when left empty.
    await page.get_by_role("link", name="Edit Basic one").click()
    await expect(page.get_by_label("Password", exact=True)).to_have_attribute(
        "placeholder", "unchanged"
    )
    await expect(page.get_by_label("Auth type")).to_have_value("basic")
    await page.get_by_label("Username", exact=True).fill("svc2")
    await page.get_by_role("button", name="Save").click()
    await expect(page.locator("tr", has_text="Basic one")).to_be_visible(timeout=EXPECT_MS)
    handle = await relay.connections.handle(saved["id"])
    assert getattr(handle.connection.http.auth, "password", None) == PASSWORD
    assert getattr(handle.connection.http.auth, "username", None) == "svc2"
    await assert_not_in_page(page, PASSWORD)

    # OAuth 2.0: the grant decides which fields show; the API's error is at its field.
    await _new_connection(page, relay, "OAuth one", "oauth2")
    await expect(page.get_by_label("Username", exact=True)).to_be_hidden()
    grant = page.get_by_label("Grant type")
    owner = page.get_by_label("Resource owner username")
    refresh = page.get_by_label("Refresh token", exact=True)
    await expect(owner).to_be_hidden()
    await grant.select_option("password")
    await expect(owner).to_be_visible()
    await grant.select_option("refresh_token")
    await expect(owner).to_be_hidden()
    await expect(refresh).to_be_visible()
    await grant.select_option("client_credentials")
    await page.get_by_label("Token URI").fill("https://login.example.com/oauth2/token")
    await page.get_by_label("Client ID").fill("cid")
    await page.get_by_role("button", name="Save").click()
    secret_field = page.get_by_label("Client secret")
    await expect(error_at(secret_field)).to_contain_text("client_credentials")
    await secret_field.fill(CLIENT_SECRET)
    await page.get_by_label("Scope").fill("orders:read")
    await page.get_by_label("Send client credentials via").select_option("body")
    await page.get_by_role("button", name="Save").click()
    await expect(page.locator("tr", has_text="OAuth one")).to_be_visible(timeout=EXPECT_MS)
    auth = (await _saved(client, "OAuth one"))["http"]["auth"]
    assert auth["type"] == "oauth2"
    assert auth["client_secret_set"] is True
    assert auth["client_credentials_location"] == "body"
    assert auth["scope"] == "orders:read"
    await assert_not_in_page(page, CLIENT_SECRET)

    # Cookie session and none.
    await _new_connection(page, relay, "Cookie one", "cookie")
    await page.get_by_label("Login URI").fill("/auth/login")
    await page.get_by_label("Login request body").fill(
        '{"password": "{{connection.http.encrypted.password}}"}'
    )
    await page.get_by_role("button", name="Save").click()
    await expect(page.locator("tr", has_text="Cookie one")).to_be_visible(timeout=EXPECT_MS)
    auth = (await _saved(client, "Cookie one"))["http"]["auth"]
    assert auth["uri"] == "/auth/login"
    assert auth["method"] == "POST"
    assert auth["success_status"] == 200

    await _new_connection(page, relay, "Digest one", "digest")
    await page.get_by_label("Username", exact=True).fill("d")
    await page.get_by_role("button", name="Save").click()
    await expect(error_at(page.get_by_label("Password", exact=True))).to_contain_text("required")
    await page.get_by_label("Auth type").select_option("none")
    await expect(page.get_by_label("Username", exact=True)).to_be_hidden()
    await page.get_by_role("button", name="Save").click()
    await expect(page.locator("tr", has_text="Digest one")).to_be_visible(timeout=EXPECT_MS)
    assert (await _saved(client, "Digest one"))["http"]["auth"] == {"type": "none"}


EXPORT = {
    "_id": "64a1f0c2e4b0a1b2c3d4e5f9",
    "type": "http",
    "name": "Imported warehouse",
    "http": {
        "formType": "http",
        "mediaType": "json",
        "baseURI": "https://warehouse.example.com/api",
        "targetConcurrencyLevel": 5,
        "auth": {"type": "basic", "basic": {"username": "svc", "password": PASSWORD}},
    },
}


@pytest.mark.timeout(120)
async def test_import_dialog_previews_refuses_and_creates(
    relay: Relay, client: APIClient, page: Page
) -> None:
    from playwright.async_api import expect

    remember_secret(PASSWORD, "wsse-" + PASSWORD)
    await sign_in(page, relay, "#/connections")
    await page.get_by_role("button", name="Import from integrator.io").click()
    dialog = page.get_by_role("dialog", name="Import from integrator.io")
    text = dialog.get_by_label("Connection JSON")
    await text.fill("{not json")
    await dialog.get_by_role("button", name="Preview").click()
    await expect(error_at(text)).to_contain_text("Not a JSON object")

    wsse = json.loads(json.dumps(EXPORT))
    wsse["http"]["auth"] = {
        "type": "wsse",
        "basic": {"username": "u", "password": "wsse-" + PASSWORD},
    }
    await text.fill(json.dumps(wsse))
    await dialog.get_by_role("button", name="Preview").click()
    await expect(dialog.locator(".import-errors")).to_contain_text("http.auth.type")
    await expect(dialog.locator(".import-errors")).to_contain_text("wsse")
    await expect(dialog.get_by_role("button", name="Create")).to_be_disabled()

    await text.fill(json.dumps(EXPORT))
    await dialog.get_by_role("button", name="Preview").click()
    await expect(dialog.locator(".import-auth")).to_have_text("Basic")
    unmapped = dialog.locator(".import-unmapped")
    await expect(unmapped).to_contain_text("http.targetConcurrencyLevel")
    await expect(unmapped).to_contain_text("not supported by Sluice yet")
    assert (await client.call("GET", "/v1/connections")).body["connections"] == []  # a preview
    await dialog.get_by_role("button", name="Create").click()
    await expect(dialog).to_have_count(0)
    await expect(page.locator(".flash")).to_contain_text("Imported connection Imported warehouse")
    await expect(page.locator("tr", has_text="Imported warehouse")).to_be_visible()
    saved = await _saved(client, "Imported warehouse")
    assert saved["http"]["auth"]["password_set"] is True
    await text.count()  # the dialog is gone; its field with it
    await assert_not_in_page(page, PASSWORD)


@pytest.mark.timeout(120)
async def test_client_certificate_pem_then_pfx(relay: Relay, client: APIClient, page: Page) -> None:
    from playwright.async_api import expect

    from tests.integration.test_client_cert import pem_identity, pfx_identity

    ca = trustme.CA()
    identity, other = pem_identity(ca), pem_identity(ca)
    await sign_in(page, relay, "#/connections")
    await _new_connection(page, relay, "mTLS one", "none")
    section = page.get_by_role("region", name="Client certificate")
    key = section.get_by_label("Private key (PEM)")
    await expect(key).to_be_hidden()
    await section.get_by_label("Client certificate").select_option("pem")
    await section.get_by_label("Certificate (PEM)").fill(identity["cert_pem"])
    await key.fill(other["key_pem"])  # another certificate's key
    await section.get_by_label("Passphrase").fill(identity["passphrase"])
    await page.get_by_role("button", name="Save").click()
    await expect(error_at(key)).to_contain_text("does not match")
    await key.fill(identity["key_pem"])
    await page.get_by_role("button", name="Save").click()
    await expect(page.locator("tr", has_text="mTLS one")).to_be_visible(timeout=EXPECT_MS)
    saved = await _saved(client, "mTLS one")
    cert = saved["http"]["tls"]["client_certificate"]
    assert cert["key_pem_set"] is True
    assert cert["passphrase_set"] is True
    assert cert["cert_pem"].strip() == identity["cert_pem"].strip()

    # Edit: the key shows as unchanged; switch to a PFX file.
    pfx = pfx_identity(ca)
    await page.get_by_role("link", name="Edit mTLS one").click()
    section = page.get_by_role("region", name="Client certificate")
    await expect(section.get_by_label("Private key (PEM)")).to_have_attribute(
        "placeholder", "unchanged"
    )
    await section.get_by_label("Client certificate").select_option("pfx")
    await section.get_by_label("PFX file").set_input_files(
        {
            "name": "client.pfx",
            "mimeType": "application/x-pkcs12",
            "buffer": base64.b64decode(pfx["pfx_base64"]),
        }
    )
    await section.get_by_label("Passphrase").fill(pfx["passphrase"])
    await page.get_by_role("button", name="Save").click()
    await expect(page.locator("tr", has_text="mTLS one")).to_be_visible(timeout=EXPECT_MS)
    cert = (await _saved(client, "mTLS one"))["http"]["tls"]["client_certificate"]
    assert cert["pfx_base64_set"] is True
    assert cert["key_pem_set"] is False
    assert cert["cert_pem"] is None
    for secret in (identity["key_pem"], pfx["pfx_base64"], pfx["passphrase"]):
        await assert_not_in_page(page, secret)
