from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from ninja.errors import HttpError
from ninja.security import HttpBearer, SessionAuth

from apps.core import services
from apps.core.services import api_token_authenticate


class BearerTokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Any:
        user = api_token_authenticate(token)
        if user is not None:
            request.user = user
        return user


class BrowserSessionAuth(SessionAuth):
    def _get_key(self, request: HttpRequest) -> str | None:
        # Only a request that carries a session cookie is a browser's: the CSRF check applies to it alone, so a
        # script with a missing or revoked token gets 401, not "CSRF check Failed".
        if self.param_name not in request.COOKIES:
            return None
        return super()._get_key(request)


# Bearer token first; a browser session works too (with its CSRF token on writes).
api_auth = [BearerTokenAuth(), BrowserSessionAuth()]


def require_staff(request: HttpRequest) -> Any:
    user = request.user
    if not (user.is_authenticated and user.is_staff):
        raise HttpError(403, "This endpoint needs a staff user.")
    return user


def client_address(request: HttpRequest | None) -> str:
    # REMOTE_ADDR, not X-Forwarded-For: a client can write that header itself.
    return str(request.META.get("REMOTE_ADDR", "")) if request is not None else ""


class LoginThrottleBackend:
    """First in AUTHENTICATION_BACKENDS, so every sign-in (the login page, the admin's) passes here before any
    backend reads the password: while the account or the address is locked out, the attempt is refused at once,
    whether the password is right or not, so its timing tells nothing. `authenticate` then reports the failure
    without trying the other backends; the request keeps the lockout for the login pages' message. It has no
    `get_user` on purpose: it never signs anyone in, so no session names it."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None, **credentials: Any) -> None:
        username = username or credentials.get(get_user_model().USERNAME_FIELD) or ""
        address = client_address(request)
        lockout = services.login_lockout(username=username, address=address)
        if lockout is None:
            return None  # the next backend checks the password
        services.login_throttled(lockout=lockout, username=username, address=address)
        if request is not None:
            request.login_lockout = lockout  # type: ignore[attr-defined]
        raise PermissionDenied(lockout.message)

    async def aauthenticate(self, request: HttpRequest | None, username: str | None = None, **credentials: Any) -> None:
        return await sync_to_async(self.authenticate)(request, username, **credentials)


def login_failed(sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any) -> None:
    """user_login_failed: a wrong username or password counts against the account and the address; an attempt
    refused by a lockout does not (its password was never read)."""
    if getattr(request, "login_lockout", None) is not None:
        return
    username = str(credentials.get(get_user_model().USERNAME_FIELD) or "")
    services.login_failure_record(username=username, address=client_address(request))


def logged_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    services.login_failures_clear(username=user.get_username())
