"""L402 (formerly LSAT) tokens for paid API endpoints.

A paid endpoint answers 402 with `WWW-Authenticate: L402 macaroon="…", invoice="…"`; once the invoice is paid the
client sends `Authorization: L402 <macaroon>:<preimage>`. Verification is stateless: the macaroon is ours because its
HMAC chain verifies under the root key, and it is paid because sha256(preimage) is the payment hash it is bound to.

Macaroons are serialised in the V2 binary format, then standard base64 with padding (what Lightning Labs' aperture
sends); verify() also accepts the URL-safe alphabet and missing padding.
"""

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from pymacaroons import MACAROON_V2, Macaroon, Verifier
from pymacaroons.exceptions import MacaroonVerificationFailedException
from pymacaroons.serializers.binary_serializer import BinarySerializer

LOCATION = "timmy-time"
ROOT_KEY_FILENAME = "l402_root_key"
ROOT_KEY_BYTES = 32
# LSAT is the protocol's earlier name; clients written against it still send it.
SCHEMES = ("l402", "lsat")

Code = Literal["missing", "malformed", "bad_signature", "bad_caveat", "expired", "wrong_endpoint", "wrong_preimage"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_PREIMAGE = re.compile(r"[0-9a-fA-F]{64}")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_UNIX_SECONDS = re.compile(r"0|[1-9][0-9]{0,11}")
_CAVEAT_KEYS = ("payment_hash", "endpoint", "expires")
_HOW = "send `Authorization: L402 <macaroon>:<preimage>` with the macaroon from WWW-Authenticate"


class L402Invalid(ValueError):
    """The Authorization header does not prove payment for this endpoint; the message tells the client why."""

    def __init__(self, reason: str, *, code: Code) -> None:
        super().__init__(reason)
        self.code: Code = code


@dataclass(frozen=True)
class _Caveats:
    payment_hash: str
    endpoint: str
    expires: int  # unix seconds

    def predicates(self) -> list[str]:
        return [f"payment_hash = {self.payment_hash}", f"endpoint = {self.endpoint}", f"expires = {self.expires}"]


def mint(*, payment_hash: str, endpoint: str, expires_at: datetime) -> str:
    if not _HEX64.fullmatch(payment_hash):
        raise ValueError("payment_hash must be 64 lowercase hex characters")
    if not endpoint or not endpoint.isprintable():
        raise ValueError("endpoint must be a non-empty printable string")
    if expires_at.utcoffset() is None:
        raise ValueError("expires_at must be timezone-aware")
    caveats = _Caveats(payment_hash=payment_hash, endpoint=endpoint, expires=int(expires_at.timestamp()))
    # The identifier only tells tokens apart; it need not be secret, the signature is what cannot be forged.
    macaroon = Macaroon(location=LOCATION, identifier=secrets.token_hex(16), key=_root_key(), version=MACAROON_V2)
    for predicate in caveats.predicates():
        macaroon.add_first_party_caveat(predicate)
    return base64.b64encode(BinarySerializer().serialize_raw(macaroon)).decode("ascii")


def challenge_header(macaroon: str, invoice: str) -> str:
    for value in (macaroon, invoice):
        # Base64 and bech32 never contain these; refusing them keeps a bad argument from breaking the header.
        if not value or any(c in value for c in '"\\\r\n'):
            raise ValueError("macaroon and invoice must be non-empty and contain no quotes, backslashes or newlines")
    return f'L402 macaroon="{macaroon}", invoice="{invoice}"'


def verify(authorization: str | None, *, endpoint: str, now: datetime) -> str:
    """Return the payment hash that `authorization` proves was paid for `endpoint`, or raise L402Invalid."""
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    token, preimage = _parse_authorization(authorization)
    macaroon = _deserialise(token)
    caveats = _read_caveats(macaroon)

    # The verifier is given exactly the predicates this token claims: it checks the HMAC chain under our root key
    # and that no caveat was added to what we issued. What the values mean is checked below, one at a time, so the
    # client learns which one failed rather than a bare "bad signature".
    verifier = Verifier()
    for predicate in caveats.predicates():
        verifier.satisfy_exact(predicate)
    try:
        verifier.verify(macaroon, _root_key())
    except MacaroonVerificationFailedException:
        raise L402Invalid(
            "the macaroon's signature does not verify: it was not issued by this server, or it was altered",
            code="bad_signature",
        ) from None

    if caveats.endpoint != endpoint:
        raise L402Invalid(
            f"this token pays for {caveats.endpoint!r}, not {endpoint!r}: pay the invoice offered by this endpoint",
            code="wrong_endpoint",
        )
    if now.timestamp() >= caveats.expires:
        expired_at = datetime.fromtimestamp(caveats.expires, tz=UTC).isoformat()
        raise L402Invalid(f"the token expired at {expired_at}: pay a new invoice", code="expired")
    paid_hash = hashlib.sha256(bytes.fromhex(preimage)).hexdigest()
    if not hmac.compare_digest(paid_hash, caveats.payment_hash):
        raise L402Invalid("the preimage does not match the token's payment hash", code="wrong_preimage")
    return caveats.payment_hash


def _parse_authorization(authorization: str | None) -> tuple[str, str]:
    if not authorization or not authorization.strip():
        raise L402Invalid(f"no Authorization header: {_HOW}", code="missing")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() not in SCHEMES:
        raise L402Invalid(f"the Authorization scheme is not L402: {_HOW}", code="malformed")
    token, colon, preimage = credentials.strip().partition(":")
    if not colon or not token:
        raise L402Invalid(f"the L402 credentials are not <macaroon>:<preimage>: {_HOW}", code="malformed")
    if not _PREIMAGE.fullmatch(preimage):
        raise L402Invalid("the preimage must be 64 hex characters (32 bytes)", code="malformed")
    return token, preimage


def _deserialise(token: str) -> Any:
    not_a_macaroon = L402Invalid("the token is not a base64-encoded macaroon", code="malformed")
    if not _BASE64.fullmatch(token):
        raise not_a_macaroon
    standard = token.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except binascii.Error:
        raise not_a_macaroon from None
    if raw[:1] != bytes([MACAROON_V2]):
        raise not_a_macaroon
    serializer = BinarySerializer()
    try:
        macaroon = serializer.deserialize_raw(raw)
    except Exception:
        # The bytes are the client's; pymacaroons signals truncated input with a bare Exception, and bad fields with
        # its own exceptions, ValueError or UnicodeDecodeError. Whatever the parser trips on, it is not a macaroon.
        raise not_a_macaroon from None
    # The parser ignores bytes after the signature; a token we issued re-serialises to exactly itself.
    if serializer.serialize_raw(macaroon) != raw:
        raise not_a_macaroon
    return macaroon


def _read_caveats(macaroon: Any) -> _Caveats:
    found: dict[str, str] = {}
    for caveat in macaroon.caveats:
        if caveat.third_party():
            raise L402Invalid("the macaroon carries a third-party caveat; this server issues none", code="bad_caveat")
        try:
            key, equals, value = caveat.caveat_id_bytes.decode("utf-8").partition(" = ")
        except UnicodeDecodeError:
            raise L402Invalid("the macaroon carries a caveat that is not UTF-8 text", code="bad_caveat") from None
        if not equals or key not in _CAVEAT_KEYS:
            raise L402Invalid(
                f"the macaroon carries a caveat this server does not issue: {key[:40]!r}", code="bad_caveat"
            )
        if key in found:
            raise L402Invalid(f"the macaroon carries the {key} caveat more than once", code="bad_caveat")
        found[key] = value
    for key in _CAVEAT_KEYS:
        if key not in found:
            raise L402Invalid(f"the macaroon lacks the {key} caveat", code="bad_caveat")
    if not _HEX64.fullmatch(found["payment_hash"]) or not _UNIX_SECONDS.fullmatch(found["expires"]):
        raise L402Invalid("the macaroon's payment_hash or expires caveat is not well-formed", code="bad_caveat")
    return _Caveats(payment_hash=found["payment_hash"], endpoint=found["endpoint"], expires=int(found["expires"]))


def _root_key() -> bytes:
    # The setting wins; without it, a key generated once under DATA_DIR keeps tokens valid across restarts.
    configured: str = getattr(settings, "L402_ROOT_KEY", "")
    if not configured:
        return _generated_root_key(Path(settings.DATA_DIR) / ROOT_KEY_FILENAME)
    try:
        key = bytes.fromhex(configured)
    except ValueError:
        raise ImproperlyConfigured("L402_ROOT_KEY is not a hex string") from None
    if len(key) < ROOT_KEY_BYTES:
        raise ImproperlyConfigured(
            f"L402_ROOT_KEY must be at least {ROOT_KEY_BYTES} bytes ({2 * ROOT_KEY_BYTES} hex characters); "
            "`python -c 'import secrets; print(secrets.token_hex(32))'` makes one"
        )
    return key


def _generated_root_key(path: Path) -> bytes:
    if not path.exists():
        _create_root_key_file(path)
    text = path.read_text(encoding="ascii").strip()
    if not _HEX64.fullmatch(text):
        raise ImproperlyConfigured(
            f"{path} does not hold a {ROOT_KEY_BYTES}-byte hex key: delete it to generate a new one (tokens already "
            "issued stop verifying), or set L402_ROOT_KEY"
        )
    return bytes.fromhex(text)


def _create_root_key_file(path: Path) -> None:
    # Written in full under a private name (O_EXCL, 0600), then hard-linked into place: of two processes creating it
    # at once, the second link fails and that process reads the first one's key; nobody reads a half-written file.
    draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(ROOT_KEY_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(draft, path)
    except FileExistsError:
        pass  # another process linked its key first; that is the key
    finally:
        os.unlink(draft)
