"""The site's own origins (scheme, host and port), for WebSocket handshakes and, through CSRF_TRUSTED_ORIGINS, for
Django's CSRF check.

Cookies do not isolate ports: a page on another port of localhost sends the dashboard's session cookie along.
So an origin is only the site's when all three parts match, never by host alone.
"""

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http.request import split_domain_port, validate_host

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_PORTS = {"http": 80, "https": 443}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
ANY_ADDRESS = ("0.0.0.0", "::")  # noqa: S104 (names of the wildcard addresses, not a bind)


def canonical_origin(value: str) -> str:
    """`value` as a browser writes an Origin (lower case, no default port), or ValueError saying why it is not one."""
    if "*" in value:
        raise ValueError("wildcards are not allowed: list each origin in full")
    # urlsplit() would quietly drop tabs and newlines: an origin with any such character is no origin.
    if not value.isascii() or not value.isprintable() or " " in value:
        raise ValueError("it contains spaces or control characters")
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError("it must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("it has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("it must not contain a user name or password")
    if parts.path or parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError("an origin has no path, query or fragment")
    if not split_domain_port(parts.netloc)[0]:
        raise ValueError("its host or port is not valid")
    port = parts.port  # ValueError for a port that is not a number in range
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def configured_origins(values: Iterable[str], *, host: str, port: int) -> list[str]:
    """The site's origins for settings: `values` in canonical form, or, when there are none, the origins a
    server on `host`:`port` is reached at (the loopback names, and `host` itself if it is another name)."""
    origins: list[str] = []
    for value in values:
        value = value.strip()
        if not value:
            continue
        try:
            # A trailing slash is a common way of writing a site's address; the origin itself has none.
            origin = canonical_origin(value[:-1] if urlsplit(value).path == "/" and value.endswith("/") else value)
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"SITE_ORIGINS (or DJANGO_CSRF_TRUSTED_ORIGINS): {value!r} is not an origin ({exc}); write "
                "scheme://host[:port], "
                "e.g. https://timmy.example.org"
            ) from None
        if origin not in origins:
            origins.append(origin)
    if origins:
        return origins
    hosts = list(LOOPBACK_HOSTS)
    if host not in ANY_ADDRESS:
        hosts.append(f"[{host}]" if ":" in host and not host.startswith("[") else host)
    for name_or_address in hosts:
        try:
            origin = canonical_origin(f"http://{name_or_address}:{port}")
        except ValueError as exc:
            raise ImproperlyConfigured(f"HOST {host!r} and PORT {port} make no origin ({exc})") from None
        if origin not in origins:
            origins.append(origin)
    return origins


def site_origins() -> list[str]:
    return list(settings.SITE_ORIGINS)


def _allowed_hosts() -> list[str]:
    # As HttpRequest.get_host(): in development with no ALLOWED_HOSTS, the loopback names.
    if settings.DEBUG and not settings.ALLOWED_HOSTS:
        return [".localhost", "127.0.0.1", "[::1]"]
    return list(settings.ALLOWED_HOSTS)


def _own_origin(scheme: str, host_header: str) -> str | None:
    """The origin the client addressed (the Host header with the connection's scheme), if that host is ours."""
    domain, _ = split_domain_port(host_header)
    if not domain or not validate_host(domain, _allowed_hosts()):
        return None
    try:
        return canonical_origin(f"{scheme}://{host_header}")
    except ValueError:
        return None


def websocket_origin_allowed(scope: Scope) -> bool:
    """Whether a WebSocket handshake comes from one of the site's origins: its Origin header equals the origin the
    client connected to (ws → http, wss → https, and the Host header, when that host is in ALLOWED_HOSTS), or one
    of SITE_ORIGINS. A missing Origin header (as channels' OriginValidator), `null`, or two of them are refused."""
    origins = [value for name, value in scope.get("headers", []) if name.lower() == b"origin"]
    hosts = [value for name, value in scope.get("headers", []) if name.lower() == b"host"]
    if len(origins) != 1:
        return False
    try:
        origin = canonical_origin(origins[0].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return False  # `null` (an opaque origin: sandboxed frame, file:// page) lands here too
    if origin in site_origins():
        return True
    if len(hosts) != 1:
        return False
    try:
        host_header = hosts[0].decode("ascii")
    except UnicodeDecodeError:
        return False
    scheme = "https" if scope.get("scheme") == "wss" else "http"
    return origin == _own_origin(scheme, host_header)


class SiteOriginValidator:
    """ASGI middleware for WebSockets: a handshake from any origin but the site's is closed before it is accepted
    (daphne answers it with 403), so the application behind never sees it."""

    def __init__(self, application: ASGIApp) -> None:
        self.application = application

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise ValueError(f"SiteOriginValidator is for WebSocket connections, not {scope['type']!r}")
        if websocket_origin_allowed(scope):
            await self.application(scope, receive, send)
            return
        origin = next((value for name, value in scope.get("headers", []) if name.lower() == b"origin"), None)
        # %r: the header is the client's to write, and must not be able to forge log lines.
        logger.warning("WebSocket %s refused: origin %r is not one of the site's", scope.get("path"), origin)
        await _refuse(receive, send)


async def _refuse(receive: Receive, send: Send) -> None:
    # A close before the accept is a refused handshake (the server answers 403); then wait for the disconnect, as
    # a consumer would, so the server does not see the application end while it still holds the socket.
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.close"})
        elif message["type"] == "websocket.disconnect":
            return
