"""The fixtures' processes behave as later tests rely on: the web server restarts on its port, the worker runs."""

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect

from apps.core.models import WorkerHeartbeat
from tests.e2e.conftest import WebServer, Worker, reload_until

pytestmark = pytest.mark.e2e


def test_restarted_web_server_answers_on_its_port_and_the_session_survives(staff_page: Page, web_server: WebServer):
    page = staff_page
    page.goto("/swarm/")
    port = web_server.port

    web_server.stop()
    assert not web_server.running
    with pytest.raises(PlaywrightError, match="ERR_CONNECTION_REFUSED"):
        page.reload()

    web_server.start()
    assert web_server.port == port
    page.goto("/swarm/")
    expect(page.get_by_role("heading", name="Swarm", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()

    web_server.restart(kill=True)  # as after a crash
    page.reload()
    expect(page.get_by_role("heading", name="Swarm", exact=True)).to_be_visible()


def test_long_running_worker_is_shown_up_on_home_then_stopped(staff_page: Page, worker: Worker):
    page = staff_page
    page.goto("/")
    expect(page.get_by_text("No worker has sent a heartbeat recently")).to_be_visible()

    worker.start()
    reload_until(page, page.get_by_text("The background worker is running."))
    assert worker.running

    worker.stop()
    assert worker.proc is not None and worker.proc.returncode == 0, worker.output()
    assert "Worker stopped." in worker.output()
    assert WorkerHeartbeat.objects.get().stopped_at is not None
    page.reload()
    expect(page.locator(".workers .badge.down")).to_have_text("stopped")
