"""Swagger UI at ``/docs`` in a real headless Chromium: it renders from the rack's own assets (no CDN), and its
"Authorize" + "Try it out" flow really calls the rack with the password the user typed into it."""

from __future__ import annotations

import base64
import http.server
import json
import secrets
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, Route, expect, sync_playwright

from tests.conftest import RunningRack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 15_000


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def open_docs(page: Page, rack: RunningRack) -> None:
    page.goto(f"{rack.url}/docs", wait_until="domcontentloaded")
    expect(page.locator(".information-container .title")).to_contain_text("Convox Rack API", timeout=WAIT_MS)
    expect(page.locator("#operations-apps-app_list")).to_be_visible(timeout=WAIT_MS)


def test_swagger_ui_renders_offline(rack: RunningRack, browser: Browser) -> None:
    context = browser.new_context(
        http_credentials={"username": "docs", "password": rack.password}, ignore_https_errors=True
    )
    try:
        page = context.new_page()
        requests: list[Request] = []
        failed: list[str] = []
        bad_status: list[str] = []
        errors: list[str] = []

        def finished(request: Request) -> None:
            response = request.response()
            if response is None or response.status >= 400:
                bad_status.append(f"{request.url}: {response.status if response else 'no response'}")

        page.on("request", lambda request: requests.append(request))
        page.on("requestfailed", lambda request: failed.append(f"{request.url}: {request.failure}"))
        page.on("requestfinished", finished)
        page.on("pageerror", lambda error: errors.append(str(error)))

        open_docs(page, rack)
        operation = page.locator("#operations-apps-app_list")
        expect(operation.locator(".opblock-summary-method")).to_have_text("GET")
        expect(operation.locator(".opblock-summary-path")).to_have_text("/apps")
        expect(operation.locator(".opblock-summary-operation-id")).to_have_text("app_list")
        expect(page.locator(".opblock-tag-section")).not_to_have_count(0)
        # Swagger UI shows its own error box when it cannot fetch or parse the document.
        expect(page.locator(".errors-wrapper")).to_have_count(0)
        expect(page.locator(".information-container .version-stamp")).to_contain_text("OAS 3.1")
        page.wait_for_load_state("networkidle", timeout=WAIT_MS)

        urls = [request.url for request in requests]
        assert f"{rack.url}/docs/assets/swagger-ui-bundle.js" in urls
        assert f"{rack.url}/docs/assets/swagger-ui.css" in urls
        assert f"{rack.url}/openapi.json" in urls
        foreign = [url for url in urls if origin(url) != rack.url]
        assert foreign == [], f"requests left the rack's origin: {foreign}"
        assert failed == [], failed
        assert bad_status == [], bad_status
        assert errors == [], errors
    finally:
        context.close()


def test_swagger_ui_try_it_out_lists_apps(rack: RunningRack, browser: Browser) -> None:
    name = f"swagger-{secrets.token_hex(3)}"
    auth = ("anyone", rack.password)
    created = httpx.post(f"{rack.url}/apps", verify=rack.verify, json={"name": name}, auth=auth, timeout=30)
    assert created.status_code == 201, created.text
    # The browser carries the password only for the page itself (HTML, assets, document); the API call made by
    # "Try it out" gets through only with the credentials typed into Swagger's "Authorize" dialog.
    docs_header = basic("page-loader", rack.password)

    def add_password(route: Route) -> None:
        path = urlsplit(route.request.url).path
        if path == "/docs" or path.startswith("/docs/") or path == "/openapi.json":
            route.continue_(headers={**route.request.headers, "authorization": docs_header})
        else:
            route.continue_()

    context = browser.new_context(ignore_https_errors=True)
    try:
        context.route(f"{rack.url}/**", add_password)
        page = context.new_page()
        open_docs(page, rack)

        page.locator(".auth-wrapper .btn.authorize").click()
        dialog = page.locator(".modal-ux")
        expect(dialog).to_be_visible(timeout=WAIT_MS)
        basic_form = dialog.locator("form").filter(has_text="basic (http, Basic)")  # beside the builders' token
        basic_form.locator("input[aria-label='auth-basic-username']").fill("swagger-user")
        basic_form.locator("input[aria-label='auth-basic-password']").fill(rack.password)
        basic_form.get_by_role("button", name="Apply credentials").click()
        expect(basic_form.get_by_text("Authorized", exact=True)).to_be_visible(timeout=WAIT_MS)
        expect(basic_form.get_by_role("button", name="Remove authorization")).to_have_text("Logout")
        dialog.get_by_role("button", name="Close").first.click()
        expect(dialog).to_have_count(0, timeout=WAIT_MS)
        expect(page.locator(".auth-wrapper .btn.authorize")).to_have_class("btn authorize locked")

        operation = page.locator("#operations-apps-app_list")
        operation.locator(".opblock-summary-control").click()
        operation.get_by_role("button", name="Try it out").click()
        with page.expect_request(lambda request: request.url == f"{rack.url}/apps" and request.method == "GET") as sent:
            operation.get_by_role("button", name="Execute").click()
        assert sent.value.headers.get("authorization") == basic("swagger-user", rack.password)

        live = operation.locator(".live-responses-table .response")
        expect(live.locator(".response-col_status")).to_have_text("200", timeout=WAIT_MS)
        body = live.locator(".response-col_description .highlight-code pre.microlight")
        expect(body).to_contain_text(name, timeout=WAIT_MS)
        shown = json.loads(body.inner_text())
        assert isinstance(shown, list)
        assert name in [app["name"] for app in shown]
        stored = page.evaluate("() => JSON.stringify(Object.assign({}, window.localStorage))")
        assert rack.password not in stored and "authorized" not in stored  # Swagger UI does not keep it
    finally:
        context.close()
        httpx.delete(f"{rack.url}/apps/{name}", verify=rack.verify, auth=auth, timeout=30)


def test_docs_need_the_password(rack: RunningRack) -> None:
    for path in ("/docs", "/openapi.json"):
        response = httpx.get(f"{rack.url}{path}", verify=rack.verify, timeout=10)
        assert response.status_code == 401, (path, response.status_code)
        assert response.headers["www-authenticate"].lower().startswith("basic")
        wrong = httpx.get(f"{rack.url}{path}", verify=rack.verify, auth=("anyone", "not-" + rack.password), timeout=10)
        assert wrong.status_code == 401, (path, wrong.status_code)
    assert httpx.get(f"{rack.url}/check", verify=rack.verify, timeout=10).status_code == 200


class EvilPage(http.server.BaseHTTPRequestHandler):
    """Another site's page (another origin: its own port) that tries to use the rack with the browser's
    credentials: a no-CORS POST (sent without a preflight) and a websocket."""

    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args: object) -> None:
        pass


def test_a_page_on_another_origin_cannot_use_a_logged_in_browser(rack: RunningRack, browser: Browser) -> None:
    name = f"csrf-{secrets.token_hex(3)}"
    auth = ("anyone", rack.password)
    assert httpx.post(f"{rack.url}/apps", verify=rack.verify, json={"name": name}, auth=auth).status_code == 201
    promote = f"/apps/{name}/releases/RNOSUCHONE/promote"
    follow = f"/apps/{name}/logs"
    EvilPage.page = f"""<html><body><script>
      window.done = {{}};
      fetch("{rack.url}{promote}", {{method: "POST", mode: "no-cors", credentials: "include"}})
        .then(() => {{ window.done.post = "sent"; }}, () => {{ window.done.post = "failed"; }});
      const ws = new WebSocket("{rack.ws_url}{follow}");
      ws.onopen = () => {{ window.done.ws = "open"; }};
      ws.onerror = () => {{ window.done.ws = "refused"; }};
    </script></body></html>""".encode()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EvilPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    context = browser.new_context(
        http_credentials={"username": "victim", "password": rack.password}, ignore_https_errors=True
    )
    try:
        page = context.new_page()
        open_docs(page, rack)  # the browser has logged in at /docs
        with page.expect_response(lambda response: response.url.endswith(promote)) as answered:
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/", wait_until="domcontentloaded")
        assert answered.value.status == 403
        page.wait_for_function("() => window.done.post && window.done.ws", timeout=WAIT_MS)
        assert page.evaluate("() => window.done.ws") == "refused"
        log = rack.data_dir / "logs" / "rack.log"
        expected = [f'status=403 method="POST" path="{promote}"', f'status=403 method="WS" path="{follow}"']
        deadline = time.monotonic() + 10
        while not all(line in log.read_text() for line in expected):
            assert time.monotonic() < deadline, "the refusals are not in the rack's log"
            time.sleep(0.05)
    finally:
        context.close()
        server.shutdown()
        server.server_close()
        httpx.delete(f"{rack.url}/apps/{name}", verify=rack.verify, auth=auth, timeout=30)
