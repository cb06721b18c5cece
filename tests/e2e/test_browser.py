"""The panel in a real browser: ``tundra serve`` as a process, driven by headless Chromium.

Shows, against the real TLS 1.3 listener: forced TOTP enrolment (an abandoned one first, which
locks nobody out), a login with TOTP, the cookie flags the browser stored, no CSP violation in
the console on any page, a cross-site form post (from a page on another origin) refused, and
re-authentication asked for a server deletion once the (shortened, 3 s) window has passed and
completing the deletion.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package; without them
the test skips with the reason, unless ``TUNDRA_REQUIRE_SERVICES=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
import pytest

PASSWORD = "correct horse battery staple"
REAUTH_WINDOW = 3
REQUIRE = os.environ.get("TUNDRA_REQUIRE_SERVICES") == "1"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def missing(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{reason}; TUNDRA_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Panel:
    url: str
    home: Path
    env: dict[str, str]
    log: Path

    def spki_hash(self) -> str:
        """base64(SHA-256(SubjectPublicKeyInfo)) of the panel certificate, for Chromium."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        cert = x509.load_pem_x509_certificate((self.home / "tls" / "panel.crt").read_bytes())
        spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def panel(tmp_path: Path) -> Iterator[Panel]:
    home = tmp_path / "home"
    port, redirect_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TUNDRA_") or k == "TUNDRA_REQUIRE_SERVICES"}
    env.update(TUNDRA_HOME=str(home), TUNDRA_PASSWORD_PROFILE="test",
               TUNDRA_PANEL_LISTEN=f"127.0.0.1:{port}",
               TUNDRA_REDIRECT_LISTEN=f"127.0.0.1:{redirect_port}", TUNDRA_GATEWAY_LISTEN="",
               TUNDRA_PUBLIC_HTTPS_PORT=str(port), TUNDRA_REAUTH_WINDOW=str(REAUTH_WINDOW))
    subprocess.run([sys.executable, "-m", "tundra", "init", "--admin", "admin",
                    "--password-stdin"], input=PASSWORD + "\n", env=env, check=True,
                   capture_output=True, text=True, timeout=120)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "tundra", "serve"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(home / "tls" / "ca.crt"))
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", context=context, timeout=2):  # noqa: S310 - https only
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("tundra serve did not come up:\n"
                                         + log.read_text(errors="replace")) from None
                time.sleep(0.2)
        yield Panel(url, home, env, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def attacker(tmp_path: Path, panel: Panel) -> Iterator[str]:
    """Another origin (http://localhost:PORT) whose page auto-posts a form to the panel."""
    site = tmp_path / "attacker"
    site.mkdir()
    (site / "attack.html").write_text(f"""<!doctype html>
<html><head><title>Win a prize</title></head><body>
<form id="f" method="post" action="{panel.url}/servers">
<input name="name" value="evil"><input name="address" value="10.6.6.6">
<input name="csrf_token" value="guessed">
</form>
<script>document.getElementById('f').submit();</script>
</body></html>""")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(site), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{server.server_address[1]}/attack.html"
    server.shutdown()
    server.server_close()


@dataclass
class Authenticator:
    """pyotp with the server's rules in mind: each code a new, currently valid time step."""

    secret: str
    last: int = -1

    def code(self) -> str:
        while True:
            now = time.time()
            step, left = int(now // 30), 30 - now % 30
            # The server accepts the previous, current and next step, each step once. The
            # previous one only with time to spare: it must still be valid when it arrives.
            usable = [s for s in (step - 1, step, step + 1)
                      if s > self.last and (s >= step or left > 5)]
            if usable:
                self.last = usable[0]
                return pyotp.TOTP(self.secret).at(self.last * 30)
            time.sleep(left + 0.5)


@pytest.fixture
def browser(tmp_path: Path, panel: Panel) -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed (pip install selenium)")
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        missing("Debian chromium and chromium-driver are not installed "
                "(apt-get install -y chromium chromium-driver)")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 # Trust exactly the panel's key (not "ignore every certificate error").
                 f"--ignore-certificate-errors-spki-list={panel.spki_hash()}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Console:
    """Everything the browser console said, kept across reads (get_log drains it)."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.entries: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        self.entries.extend(self.driver.get_log("browser"))
        return self.entries

    def csp_violations(self) -> list[str]:
        return [e["message"] for e in self.read()
                if "Content Security Policy" in e["message"] or "Refused to" in e["message"]]


def fill(driver: Any, **fields: str) -> None:
    from selenium.webdriver.common.by import By

    for name, value in fields.items():
        element = driver.find_element(By.NAME, name)
        element.clear()
        element.send_keys(value)


def click(driver: Any, text: str) -> None:
    from selenium.webdriver.common.by import By

    buttons = [b for b in driver.find_elements(By.CSS_SELECTOR, "main button")
               if text in b.text]
    assert buttons, f"no button {text!r} on {driver.current_url}:\n{driver.page_source[:2000]}"
    buttons[0].click()


def wait_for(driver: Any, condition: Any, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition(driver):
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; at {driver.current_url}:\n"
                         + driver.page_source[:3000])


def path_is(path: str) -> Any:
    return lambda d: d.current_url.split("://", 1)[1].split("/", 1)[1].startswith(path.lstrip("/"))


def test_panel_in_a_real_browser(panel: Panel, browser: Any, attacker: str) -> None:
    from selenium.webdriver.common.by import By

    driver, console = browser, Console(browser)

    # 1. First login of the administrator: password, then forced TOTP enrolment.
    driver.get(f"{panel.url}/servers")
    wait_for(driver, path_is("/login"), "the login page")
    fill(driver, username="admin", password=PASSWORD)
    click(driver, "Log in")
    wait_for(driver, path_is("/login/enroll"), "the enrolment page")
    assert not [c for c in driver.get_cookies() if c["name"] == "__Host-tundra_session"]
    click(driver, "Create my authenticator key")
    wait_for(driver, lambda d: d.find_elements(By.ID, "totp-secret"), "the TOTP key")
    abandoned = driver.find_element(By.ID, "totp-secret").text.strip()
    # Leaving the page without a code changes nothing: logging in again starts afresh.
    driver.get(f"{panel.url}/login?next=/servers")
    fill(driver, username="admin", password=PASSWORD)
    click(driver, "Log in")
    wait_for(driver, path_is("/login/enroll"), "the enrolment page again")
    click(driver, "Create my authenticator key")
    wait_for(driver, lambda d: d.find_elements(By.ID, "totp-secret"), "a new TOTP key")
    assert driver.find_element(By.ID, "totp-secret").text.strip() != abandoned
    qr = driver.find_element(By.CSS_SELECTOR, "figure.qr img")
    assert driver.execute_script("return arguments[0].naturalWidth", qr) > 0, "QR not loaded"
    authenticator = Authenticator(driver.find_element(By.ID, "totp-secret").text.strip())
    fill(driver, code=authenticator.code())
    click(driver, "Finish set-up")
    wait_for(driver, path_is("/servers"), "the servers page after enrolment")

    # 2. Log out, and log in again with password + TOTP.
    driver.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_for(driver, path_is("/login"), "the login page after logout")
    fill(driver, username="admin", password=PASSWORD)
    click(driver, "Log in")
    wait_for(driver, path_is("/login/totp"), "the TOTP step")
    fill(driver, code=authenticator.code())
    click(driver, "Verify")
    wait_for(driver, lambda d: d.find_elements(By.TAG_NAME, "h1")
             and d.find_element(By.TAG_NAME, "h1").text == "Dashboard", "the dashboard")

    # 3. The cookies the browser stored.
    cookies = {c["name"]: c for c in driver.get_cookies()}
    session = cookies["__Host-tundra_session"]
    assert session["httpOnly"] is True
    assert session["secure"] is True
    assert session["sameSite"] == "Strict"
    assert session["path"] == "/"
    assert session["domain"] == "127.0.0.1"  # host-only: no Domain attribute
    assert "expiry" not in session  # a browser-session cookie; the server times it out
    for cookie in cookies.values():
        assert cookie["secure"]
        assert cookie["httpOnly"]
        assert cookie["sameSite"] == "Strict"

    # 4. Add a server through the form (CSRF token and same-origin checks pass).
    driver.get(f"{panel.url}/servers")
    fill(driver, name="web-1", address="10.0.0.1", tags="prod")
    click(driver, "Add server")
    wait_for(driver, path_is("/servers/web-1"), "the new server's page")
    assert "The server was added." in driver.page_source

    # 5. A cross-site page auto-posts a form to the panel: refused, nothing created.
    driver.get(attacker)
    wait_for(driver, lambda d: d.current_url.startswith(panel.url), "the cross-site post")
    wait_for(driver, lambda d: "Request refused" in d.title, "the refusal page")
    assert "cross-site request refused" in driver.page_source
    driver.get(f"{panel.url}/servers")
    assert "web-1" in driver.page_source
    assert "evil" not in driver.page_source

    # 6. After the re-authentication window, deleting a server asks for the password.
    time.sleep(REAUTH_WINDOW + 1)
    driver.get(f"{panel.url}/servers/web-1")
    click(driver, "Delete web-1")
    wait_for(driver, lambda d: "Confirm it is you" in d.page_source, "the re-auth page")
    assert driver.find_element(By.ID, "reauth_totp")
    fill(driver, reauth_password=PASSWORD, reauth_totp=authenticator.code())
    click(driver, "Confirm and delete server web-1")
    wait_for(driver, lambda d: "The server was deleted." in d.page_source, "the deletion")
    assert "web-1" not in driver.find_element(By.TAG_NAME, "main").text

    # 7. Every page of the panel, then the console: not one CSP violation.
    for path in ("/", "/servers", "/tokens", "/audit", "/settings", "/no-such-page"):
        driver.get(f"{panel.url}{path}")
    assert console.csp_violations() == []
    # The deletion is in the audit log, right after the re-authentication that allowed it.
    driver.get(f"{panel.url}/audit?action=identity:reauth:grant")
    assert "identity:reauth:grant" in driver.find_element(By.TAG_NAME, "main").text
    driver.get(f"{panel.url}/audit?action=fleet:server:delete")
    assert "server:web-1" in driver.find_element(By.TAG_NAME, "main").text
