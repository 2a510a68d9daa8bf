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


# Bearer token first; a browser session works too (with its CSRF token on writes).
api_auth = [BearerTokenAuth(), SessionAuth()]


def require_staff(request: HttpRequest) -> Any:
    user = request.user
    if not (user.is_authenticated and user.is_staff):
        raise HttpError(403, "This endpoint needs a staff user.")
    return user
