from typing import Any

from django.http import HttpRequest
from ninja.errors import HttpError
from ninja.security import HttpBearer, SessionAuth

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
