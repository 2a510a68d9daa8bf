"""Browser tests: Chromium drives a real daphne and a real worker, each a subprocess on the test database.

Every wait here is bounded: a server that does not come up, a worker that hangs or a page that never shows
what a test expects fails the test with what the process printed, instead of stalling the run.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    Playwright,
    Request,
    Route,
    ViewportSize,
    expect,
    sync_playwright,
)

from apps.swarm.models import Task
from tests.factories import StaffFactory

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"  # what tests.factories.UserFactory sets

# Playwright cannot download its own browser here: drive Debian's, with nothing that phones home.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})

SERVER_START_SECONDS = 20.0
PROCESS_STOP_SECONDS = 10.0
WORKER_ONCE_SECONDS = 30.0
# Playwright's own waits (actions, expect, navigation), in milliseconds.
ACTION_TIMEOUT_MS = 5_000
NAVIGATION_TIMEOUT_MS = 10_000
POST_TASK_TIMEOUT_MS = 30_000

DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}

# Environment of the web server and worker: auctions close a second after a task is posted.
SUBPROCESS_SETTINGS = {
    "AUCTION_SECONDS": "1",
    "WORKER_POLL_SECONDS": "0.2",
    "WORKER_HEARTBEAT_SECONDS": "1",
}
# Set in this process while Playwright runs (see `playwright`); the subprocesses must keep Django's check.
ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"

expect.set_options(timeout=ACTION_TIMEOUT_MS)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _terminate(proc: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    if proc.poll() is not None:
        return
    if kill:
        proc.kill()
    else:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=PROCESS_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=PROCESS_STOP_SECONDS)


class _Process:
    """A manage.py-style subprocess whose output goes to a log file (a pipe nobody reads would fill and block)."""

    name = "process"

    def __init__(self, *, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: TextIO | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _spawn(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.proc.pid})")  # type: ignore[union-attr]
        self._log = self.log_path.open("a")
        self._log.write(f"--- starting: {' '.join(self.argv)}\n")
        self._log.flush()
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM and wait (or SIGKILL with kill=True, as a crash would); a process that lingers is killed."""
        if self.proc is not None:
            _terminate(self.proc, kill=kill)
        if self._log is not None:
            self._log.close()
            self._log = None


class WebServer(_Process):
    """daphne serving timmy_site on one local port; restart() keeps the port, so open pages can reconnect."""

    name = "daphne"

    def __init__(self, *, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        argv = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "timmy_site.asgi:application"]
        super().__init__(argv=argv, env=env, log_path=log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = SERVER_START_SECONDS) -> None:
        self._spawn()
        try:
            self._wait_until_answering(timeout)
        except BaseException:
            self.stop(kill=True)
            raise

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def _wait_until_answering(self, timeout: float) -> None:
        # The login page needs Django, the database and the templates: when it answers, the server works.
        probe = f"{self.url}/accounts/login/"
        deadline = time.monotonic() + timeout
        last_error = "no attempt"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(
                    f"daphne exited with status {self.proc.returncode} before answering on {self.url}.\n"
                    f"Its output:\n{self.output()}"
                )
            try:
                with urllib.request.urlopen(probe, timeout=2) as response:  # noqa: S310 (our own http URL)
                    if response.status == 200:
                        return
                    last_error = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                last_error = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last_error = repr(exc)
            time.sleep(0.1)
        pytest.fail(
            f"daphne did not answer {probe} within {timeout:.0f} s (last attempt: {last_error}).\n"
            f"Its output:\n{self.output()}"
        )


class Worker(_Process):
    """The background worker: run_once() runs every step a single time; start()/stop() keep one running."""

    name = "worker"

    def __init__(
        self,
        *,
        env: dict[str, str],
        log_path: Path,
        run_manage: Callable[..., subprocess.CompletedProcess[str]],
        overrides: dict[str, str],
    ) -> None:
        super().__init__(argv=[sys.executable, "manage.py", "run_worker"], env=env, log_path=log_path)
        self._run_manage = run_manage
        self._overrides = overrides

    def run_once(self, timeout: float = WORKER_ONCE_SECONDS) -> str:
        result = self._run_manage("run_worker", "--once", timeout=timeout, env=self._overrides)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"run_worker --once exited with {result.returncode}:\n{output}"
        return output

    def start(self) -> None:
        self._spawn()


def _subprocess_overrides() -> dict[str, str]:
    overrides = dict(SUBPROCESS_SETTINGS)
    if os.environ.get(ASYNC_UNSAFE):
        overrides[ASYNC_UNSAFE] = ""  # empty is off for Django; run_manage can only override, not remove
    return overrides


@pytest.fixture
def e2e_env(transactional_db: None, subprocess_env: dict[str, str]) -> dict[str, str]:
    """The subprocess environment (this test's database) with the e2e settings; read after the db is set up."""
    env = {**subprocess_env, **SUBPROCESS_SETTINGS}
    env.pop(ASYNC_UNSAFE, None)
    return env


@pytest.fixture
def web_server(e2e_env: dict[str, str], tmp_path: Path) -> Iterator[WebServer]:
    server = WebServer(env=e2e_env, log_path=tmp_path / "daphne.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def worker(
    e2e_env: dict[str, str],
    run_manage: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> Iterator[Worker]:
    proc = Worker(
        env=e2e_env, log_path=tmp_path / "worker.log", run_manage=run_manage, overrides=_subprocess_overrides()
    )
    yield proc
    proc.stop()


# One Playwright and one Chromium for all the browser tests. Package scope, not session: while Playwright's sync
# API is running its event loop is "running" in this thread, so Django's async-safety check is switched off only
# for this package and comes back for the tests after it.
@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ASYNC_UNSAFE, "true")
        with sync_playwright() as pw:
            yield pw


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
    yield browser
    browser.close()


class RecordedPage:
    """What a test needs besides the page: the requests it made and the errors its scripts raised."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.requests: list[str] = []
        self.js_errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("pageerror", lambda error: self.js_errors.append(str(error)))

    def external_requests(self) -> list[str]:
        return [url for url in self.requests if not _is_local(url)]


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return (parts.hostname or "") in LOCAL_HOSTS or f"[{parts.hostname}]" in LOCAL_HOSTS


def _new_page(browser: Browser, server: WebServer, viewport: ViewportSize) -> tuple[BrowserContext, RecordedPage]:
    context = browser.new_context(base_url=server.url, viewport=viewport)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    context.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)

    # The dashboard must work with no internet: nothing leaves the machine (and the test sees if anything tried).
    def offline(route: Route, request: Request) -> None:
        if _is_local(request.url):
            route.continue_()
        else:
            route.abort("internetdisconnected")

    context.route("**/*", offline)
    page = context.new_page()
    return context, RecordedPage(page)


@pytest.fixture
def recorded_page(browser: Browser, web_server: WebServer) -> Iterator[RecordedPage]:
    context, recorded = _new_page(browser, web_server, DESKTOP)
    yield recorded
    context.close()


@pytest.fixture
def page(recorded_page: RecordedPage) -> Page:
    """A fresh desktop-sized page in its own context (no cookies), based at the web server: page.goto("/swarm/")."""
    return recorded_page.page


@pytest.fixture
def phone_page(browser: Browser, web_server: WebServer) -> Iterator[Page]:
    context, recorded = _new_page(browser, web_server, PHONE)
    yield recorded.page
    context.close()


@pytest.fixture
def staff(transactional_db: None) -> Any:
    return StaffFactory(username="operator")


def log_in(page: Page, username: str, password: str = PASSWORD, *, next_path: str = "/") -> None:
    """Log in through the real login form, as a person would, and wait until the page behind it is shown."""
    page.goto(f"/accounts/login/?next={next_path}")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: urlsplit(url).path == next_path)
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


@pytest.fixture
def staff_page(page: Page, staff: Any) -> Page:
    log_in(page, staff.username)
    return page


def reload_until(page: Page, locator: Locator, *, timeout: float = 10.0, interval: float = 0.2) -> None:
    """Reload until `locator` is visible: for state that another process changes (the page does not update itself)."""
    deadline = time.monotonic() + timeout
    while True:
        page.reload()
        if locator.is_visible():
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"{locator} was not visible on {page.url} after reloading for {timeout:.0f} s")
        time.sleep(interval)


def event_rows(page: Page) -> Locator:
    return page.locator("table.events tbody tr")


def post_task(page: Page, description: str) -> Task:
    """Post a task through the form on /swarm/ and return it as stored."""
    page.goto("/swarm/")
    page.get_by_label("Description").fill(description)
    # Posting embeds the task for the agents' bids: the first post may wait for daphne to load the embedding model
    # (PRELOAD_MODELS is off in tests), seconds on a busy machine.
    page.get_by_role("button", name="Post task").click(timeout=POST_TASK_TIMEOUT_MS)
    message = page.locator(".messages li").filter(has_text="posted")
    expect(message).to_be_visible()
    match = re.search(r"Task (\d+) posted", message.inner_text())
    assert match, message.inner_text()
    return Task.objects.get(pk=int(match.group(1)))
