"""When the database cannot answer now, and what to say then.

Two cases are the operator's, not bugs: the database is *busy* (another process holds it: a backup, `sqlite3` in a
terminal, a long migration; on PostgreSQL a lock held past `lock_timeout`) and the database is *unreachable* (a
PostgreSQL server restarting or down). Every connection waits DATABASE_BUSY_SECONDS for a lock (SQLite's busy
timeout, PostgreSQL's lock_timeout and connect_timeout: settings.py) before giving up, so nothing waits forever and
nothing is half-written: the statement that gave up is rolled back with its transaction. Requests then answer 503
with Retry-After (middleware below, and the API's handler in timmy_site/api.py); the worker backs off
(apps/core/worker.py).
"""

import logging
import sys
from typing import Any

from django.conf import settings
from django.db import DatabaseError, InterfaceError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.template.loader import render_to_string

logger = logging.getLogger(__name__)

BUSY = "busy"
UNREACHABLE = "unreachable"

# SQLite's words for a lock it could not get within its busy timeout.
_SQLITE_BUSY = ("database is locked", "database table is locked", "database schema is locked", "database is busy")
# PostgreSQL: lock_not_available, query_canceled (a lock wait cut by statement_timeout), deadlock_detected,
# serialization_failure; then the server going away or not taking connections yet.
_PG_BUSY_STATES = {"55P03", "57014", "40P01", "40001"}
_PG_UNREACHABLE_STATES = {"57P01", "57P02", "57P03", "53300"}
_PG_UNREACHABLE_WORDS = (
    "connection",
    "server closed",
    "could not connect",
    "is the server running",
    "the database system is",
    "terminating",
    "no such file or directory",
)


def unavailable(exc: BaseException | None) -> str | None:
    """BUSY or UNREACHABLE when `exc` says the database cannot answer now, None for any other error (a bug, a
    missing table, a constraint: those stay errors)."""
    if not isinstance(exc, DatabaseError | InterfaceError):
        return None
    cause = exc.__cause__ or exc
    state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    message = str(cause).lower()
    if state in _PG_BUSY_STATES:
        return BUSY
    if state in _PG_UNREACHABLE_STATES or (state and state.startswith("08")):
        return UNREACHABLE
    if any(words in message for words in _SQLITE_BUSY):
        return BUSY
    # A PostgreSQL connection that failed or broke carries no SQLSTATE.
    no_connection = isinstance(exc, InterfaceError) or any(words in message for words in _PG_UNREACHABLE_WORDS)
    if state is None and type(cause).__module__.startswith("psycopg") and no_connection:
        return UNREACHABLE
    return None


def retry_after() -> int:
    return max(1, round(settings.DATABASE_BUSY_SECONDS))


def message(kind: str) -> str:
    if kind == UNREACHABLE:
        return (
            "The database is not reachable right now (is it restarting?). Nothing was changed: try again in "
            f"{retry_after()} seconds."
        )
    return (
        f"The database is busy: another program is holding it (a backup, a migration, a terminal), and it stayed "
        f"busy for {settings.DATABASE_BUSY_SECONDS:g} seconds. Nothing was changed: try again in {retry_after()} "
        "seconds."
    )


API_PREFIX = "/api/"


def api_response(exc: BaseException, kind: str) -> JsonResponse:
    _log(exc, kind, "API request")
    response = JsonResponse({"detail": message(kind), "retry_after": retry_after()}, status=503)
    response["Retry-After"] = str(retry_after())
    return response


def page_response(request: HttpRequest, exc: BaseException, kind: str) -> HttpResponse:
    """The answer for a page: a notice shown in place for htmx (base.html swaps 503s into #page-alert, so a form
    keeps what was typed), a page of its own otherwise. Neither touches the database (no context processors)."""
    _log(exc, kind, f"{request.method} {request.path}")
    context = {"message": message(kind), "retry_after": retry_after(), "method": request.method}
    if request.headers.get("HX-Request") == "true":
        response = HttpResponse(render_to_string("core/_database_busy.html", context), status=503)
        response["HX-Retarget"] = "#page-alert"
        response["HX-Reswap"] = "innerHTML"
    else:
        response = HttpResponse(render_to_string("core/database_busy.html", context), status=503)
    response["Retry-After"] = str(retry_after())
    return response


def _log(exc: BaseException, kind: str, what: str) -> None:
    logger.warning("database %s, answered 503 to %s: %s", kind, what, exc)


class DatabaseUnavailableMiddleware:
    """Turns a busy or unreachable database into 503 with Retry-After instead of 500. A view's error comes to
    process_exception; one raised elsewhere (the session saved by its middleware, say) has already become Django's
    500 response by the time it gets here, so the signal receiver below marks the request and the 500 is replaced.
    First in MIDDLEWARE, so that it sees every other middleware's answer."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response: HttpResponseBase = self.get_response(request)
        marked = getattr(request, "_database_unavailable", None)
        if marked is not None and response.status_code == 500:
            exc, kind = marked
            return self.answer(request, exc, kind)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        kind = unavailable(exception)
        return self.answer(request, exception, kind) if kind else None

    @staticmethod
    def answer(request: HttpRequest, exc: BaseException, kind: str) -> HttpResponse:
        # A script calling the API reads JSON, whatever failed before its view ran (a session, a token's last use).
        if request.path.startswith(API_PREFIX):
            return api_response(exc, kind)
        return page_response(request, exc, kind)


def note_request_exception(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    """got_request_exception: remember on the request that its error was the database's (see the middleware)."""
    exc = sys.exc_info()[1]
    kind = unavailable(exc)
    if request is not None and kind is not None:
        request._database_unavailable = (exc, kind)  # type: ignore[attr-defined]


def api_exception_handler(request: HttpRequest, exc: Any) -> HttpResponse:
    """The API's handler of database errors (Django Ninja answers its views' errors itself): 503 when the database
    cannot answer now, the error as before otherwise."""
    kind = unavailable(exc)
    if kind is None:
        raise exc
    return api_response(exc, kind)
