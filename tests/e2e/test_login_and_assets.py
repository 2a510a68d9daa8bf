from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import RecordedPage, log_in

HTMX = "/static/vendor/htmx/htmx-2.0.11.min.js"

pytestmark = pytest.mark.e2e


def test_anonymous_visitor_to_swarm_lands_on_login_and_the_page_needs_no_internet(recorded_page: RecordedPage, staff):
    page = recorded_page.page
    with page.expect_response(lambda r: urlsplit(r.url).path == HTMX) as htmx_response:
        page.goto("/swarm/")

    url = urlsplit(page.url)
    assert url.path == "/accounts/login/"
    assert parse_qs(url.query) == {"next": ["/swarm/"]}
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    expect(page.get_by_role("navigation", name="Main")).to_have_count(0)

    # The vendored htmx is served by the app itself, and runs.
    assert htmx_response.value.status == 200
    assert "javascript" in htmx_response.value.headers["content-type"]
    assert page.evaluate("() => window.htmx && window.htmx.version") == "2.0.11"

    # Logging in goes back to the page that was asked for.
    log_in(page, staff.username, next_path="/swarm/")
    expect(page.get_by_role("heading", name="Swarm", exact=True)).to_be_visible()
    assert page.evaluate("() => window.htmx && window.htmx.version") == "2.0.11"

    assert recorded_page.requests, "the page fixture recorded no request at all"
    assert recorded_page.external_requests() == []
    assert recorded_page.js_errors == []
