"""The site's origins (issue 16): every write with a session cookie is refused from any other origin, where an
origin is scheme, host AND port; SITE_ORIGINS (or its older name DJANGO_CSRF_TRUSTED_ORIGINS) adds a proxy's.

The WebSocket side is in tests/events/test_ws_origins.py.
"""

import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve, reverse
from django.urls.resolvers import RegexPattern

from apps.core.origins import configured_origins
from tests.factories import StaffFactory
from timmy_site.api import api

ROOT = Path(__file__).resolve().parents[2]
API_PREFIX = "/api/v1/"

# The site as a test server on a port chosen at run time (PORT unset), and pages elsewhere that a browser holding
# the staff session might also have open.
HOST = "127.0.0.1:41234"
SITE = f"http://{HOST}"
FOREIGN = [
    "http://localhost:9999",
    "http://127.0.0.1:41235",
    "https://127.0.0.1:41234",
    "null",
    "http://127.0.0.1.evil.example:41234",
    "http://localhost.evil:41234",
    "http://evil-localhost:41234",
]
UNSAFE_METHODS = ("post", "put", "patch", "delete")

# Values for the URL parameters: nothing of these ids exists, which does not matter, since the CSRF check comes
# before the view. A pattern whose parameter is missing here fails the walk with its name.
CONVERTER_SAMPLES = {"int": "999999", "str": "999999", "path": "999999", "slug": "x", "uuid": str(uuid.uuid4())}
REGEX_SAMPLES = {"app_label": "auth", "url": "nowhere/"}


def _fill_route(route: str) -> str:
    return re.sub(r"<(?:(\w+):)?\w+>", lambda m: CONVERTER_SAMPLES[m.group(1) or "str"], route)


def _fill_regex(regex: str) -> str:
    filled = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: REGEX_SAMPLES[m.group(1)], regex)
    return filled.removeprefix("^").removesuffix("$")


def _walk(patterns: Iterable[URLPattern | URLResolver], prefix: str) -> Iterator[str]:
    for pattern in patterns:
        text = str(pattern.pattern)
        part = _fill_regex(text) if isinstance(pattern.pattern, RegexPattern) else _fill_route(text)
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + part)
        else:
            yield prefix + part


def every_url() -> list[str]:
    """A concrete path for every URL pattern of the project, each checked to resolve."""
    paths = sorted(set(_walk(get_resolver().url_patterns, "/")))
    for path in paths:
        resolve(path)  # Resolver404 here: a sample above does not fit a new pattern
    return paths


def session_api_writes() -> list[tuple[str, str]]:
    """(method, path) of every API operation that changes something and accepts the browser session."""
    schema = api.get_openapi_schema(path_prefix=API_PREFIX)
    writes = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            schemes = {name for requirement in operation.get("security") or [] for name in requirement}
            if method in UNSAFE_METHODS and "BrowserSessionAuth" in schemes:
                writes.append((method, re.sub(r"\{\w+\}", CONVERTER_SAMPLES["str"], path)))
    return writes


@pytest.fixture
def csrf_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="django.security.csrf")
    return caplog


def refused_by_csrf(log: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in log.records if r.name == "django.security.csrf"]


@pytest.fixture
def browser(db: None) -> Callable[[], Client]:
    """A new browser of the logged-in superuser each time (a POST to a logout URL must not end the others' session),
    holding the CSRF cookie the site gave it."""
    operator = StaffFactory(username="operator", is_superuser=True)

    def open_browser() -> Client:
        client = Client(enforce_csrf_checks=True, headers={"host": HOST})
        client.force_login(operator)
        client.get(reverse("login"))
        return client

    return open_browser


def csrf_token(client: Client) -> str:
    return str(client.cookies[django_settings.CSRF_COOKIE_NAME].value)


# Every page URL: a cross-origin POST with the session is refused, a same-origin POST with the token is not.


def page_urls() -> list[str]:
    return [path for path in every_url() if not path.startswith(API_PREFIX)]


def test_a_post_to_any_page_with_the_session_but_a_foreign_origin_is_refused_with_403(browser, csrf_log):
    client = browser()
    wrongly_let_through = {}
    for path in page_urls():
        for origin in FOREIGN:
            csrf_log.clear()
            response = client.post(path, headers={"origin": origin})
            reasons = refused_by_csrf(csrf_log)
            if response.status_code != 403 or not any("Origin checking failed" in reason for reason in reasons):
                wrongly_let_through[(path, origin)] = response.status_code

    assert wrongly_let_through == {}


def test_a_post_to_any_page_from_the_site_with_its_csrf_token_passes_the_csrf_check(browser, csrf_log):
    refused = {}
    for path in page_urls():
        client = browser()
        csrf_log.clear()
        client.post(path, headers={"origin": SITE, "x-csrftoken": csrf_token(client)})
        if reasons := refused_by_csrf(csrf_log):
            refused[path] = reasons

    assert refused == {}


def test_the_walk_reaches_the_pages_that_take_posts():
    # A guard on the walk itself: if these are missing, the tests above prove nothing.
    assert {"/admin/login/", "/chat", "/memory/facts", "/self-modify/queue/999999/approve", "/admin/auth/"} <= set(
        page_urls()
    )


# The API: a script with a Bearer token carries no cookie and no CSRF check applies; a browser session does.


def test_every_api_url_is_covered_by_the_schema_the_api_walk_reads():
    api_urls = {path for path in every_url() if path.startswith(API_PREFIX)}
    schema_urls = {path for _, path in session_api_writes()}

    assert schema_urls <= api_urls
    assert {"/api/v1/tasks", "/api/v1/memory/999999", "/api/v1/upgrades/999999/approve"} <= schema_urls


def test_an_api_write_with_the_session_but_a_foreign_origin_is_refused_with_403(browser, csrf_log):
    client = browser()
    wrongly_let_through = {}
    for method, path in session_api_writes():
        for origin in FOREIGN:
            csrf_log.clear()
            response = getattr(client, method)(path, headers={"origin": origin})
            reasons = refused_by_csrf(csrf_log)
            if response.status_code != 403 or not any("Origin checking failed" in reason for reason in reasons):
                wrongly_let_through[(method, path, origin)] = response.status_code

    assert wrongly_let_through == {}


def test_an_api_write_from_the_site_with_its_csrf_token_passes_the_csrf_check(browser, csrf_log):
    client = browser()
    refused = {}
    for method, path in session_api_writes():
        csrf_log.clear()
        # A JSON body, as the API's browser callers send: an empty one, which no operation accepts.
        response = getattr(client, method)(
            path, "", content_type="application/json", headers={"origin": SITE, "x-csrftoken": csrf_token(client)}
        )
        if reasons := refused_by_csrf(csrf_log):
            refused[(method, path)] = (response.status_code, reasons)

    assert refused == {}


def test_a_configured_proxy_origin_may_post_and_nothing_wider(settings, browser, csrf_log):
    settings.CSRF_TRUSTED_ORIGINS = configured_origins(["https://timmy.example.org/"], host="127.0.0.1", port=8000)
    client = browser()

    client.post("/memory/facts", headers={"origin": "https://timmy.example.org", "x-csrftoken": csrf_token(client)})
    assert refused_by_csrf(csrf_log) == []
    for neighbour in ("https://evil.timmy.example.org", "http://timmy.example.org", "https://timmy.example.org:8443"):
        response = client.post("/memory/facts", headers={"origin": neighbour, "x-csrftoken": csrf_token(client)})
        assert response.status_code == 403, neighbour


# The setting itself.


def test_by_default_the_site_origins_are_those_make_run_serves():
    assert configured_origins([], host="127.0.0.1", port=8000) == [
        "http://127.0.0.1:8000",
        "http://localhost:8000",
        "http://[::1]:8000",
    ]
    assert configured_origins([], host="0.0.0.0", port=8080)[-1] == "http://[::1]:8080"  # noqa: S104 (a value)
    assert configured_origins([], host="timmy.lan", port=80)[-1] == "http://timmy.lan"
    assert configured_origins([], host="fe80::1", port=8000)[-1] == "http://[fe80::1]:8000"


def test_configured_origins_are_written_as_browsers_send_them():
    assert configured_origins(
        [" HTTPS://Timmy.Example.org:443/", "http://10.0.0.5:8000", "https://timmy.example.org", ""],
        host="127.0.0.1",
        port=8000,
    ) == ["https://timmy.example.org", "http://10.0.0.5:8000"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("https://*.example.org", "wildcards are not allowed"),
        ("*", "wildcards are not allowed"),
        ("timmy.example.org", "must start with http:// or https://"),
        ("ftp://timmy.example.org", "must start with http:// or https://"),
        ("https://timmy.example.org/dashboard", "no path"),
        ("https://admin@timmy.example.org", "user name or password"),
        ("https://timmy.example.org:99999", "Port out of range"),
        ("https://timmy example.org", "spaces"),
    ],
)
def test_a_value_that_is_not_an_origin_is_refused_with_the_reason(value, reason):
    with pytest.raises(ImproperlyConfigured, match=re.escape(reason)):
        configured_origins([value], host="127.0.0.1", port=8000)


def settings_in_a_fresh_process(**env: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.SITE_ORIGINS == settings.CSRF_TRUSTED_ORIGINS, *settings.CSRF_TRUSTED_ORIGINS)"
    )
    environment = {k: v for k, v in os.environ.items() if k not in ("SITE_ORIGINS", "PORT")}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**environment, "DJANGO_SETTINGS_MODULE": "timmy_site.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_site_origins_and_the_old_csrf_variable_both_become_the_trusted_origins():
    result = settings_in_a_fresh_process(
        SITE_ORIGINS="https://timmy.example.org", DJANGO_CSRF_TRUSTED_ORIGINS="https://old.example.org:8443"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "https://timmy.example.org", "https://old.example.org:8443"]


def test_a_wildcard_in_site_origins_stops_start_up_with_the_reason():
    result = settings_in_a_fresh_process(SITE_ORIGINS="https://*.example.org", DJANGO_CSRF_TRUSTED_ORIGINS="")

    assert result.returncode != 0
    assert "SITE_ORIGINS (or DJANGO_CSRF_TRUSTED_ORIGINS): 'https://*.example.org' is not an origin" in result.stderr
