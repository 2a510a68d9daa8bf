import base64
import hashlib
import os
import re
import secrets
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from pymacaroons import Macaroon, Verifier

from apps.ledger import l402
from apps.ledger.l402 import L402Invalid, challenge_header, mint, verify

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ENDPOINT = "/api/v1/paid/summarise"
INVOICE = "lnbcrt10u1pn9xyzpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdqqcqzzsxqyz5vq"


@pytest.fixture
def root_key(settings: Any) -> str:
    settings.L402_ROOT_KEY = secrets.token_hex(32)
    return settings.L402_ROOT_KEY


class Payment:
    """What the client learns by paying the invoice: the preimage, whose sha256 is the payment hash."""

    def __init__(self) -> None:
        self.preimage = secrets.token_hex(32)
        self.payment_hash = hashlib.sha256(bytes.fromhex(self.preimage)).hexdigest()


def challenge(payment: Payment, *, endpoint: str = ENDPOINT, expires_at: datetime = NOW + timedelta(minutes=10)) -> str:
    token = mint(payment_hash=payment.payment_hash, endpoint=endpoint, expires_at=expires_at)
    return challenge_header(token, INVOICE)


# The client side: it knows the protocol, pymacaroons and hashlib, nothing of the server's code.


def parse_challenge(header: str) -> tuple[str, str]:
    match = re.fullmatch(r'L402 macaroon="([^"]+)", invoice="([^"]+)"', header)
    assert match, header
    return match[1], match[2]


def client_caveats(token: str) -> list[str]:
    return [caveat.caveat_id_bytes.decode() for caveat in Macaroon.deserialize(token).caveats]


def authorization(token: str, preimage: str, scheme: str = "L402") -> str:
    return f"{scheme} {token}:{preimage}"


def refused(header: str | None, root_key: str = "", *, endpoint: str = ENDPOINT, now: datetime = NOW) -> L402Invalid:
    with pytest.raises(L402Invalid) as refusal:
        verify(header, endpoint=endpoint, now=now)
    if root_key:
        assert root_key not in str(refusal.value).lower()
    return refusal.value


# --- the happy path ---


def test_a_client_that_paid_the_invoice_gets_in_and_the_payment_hash_is_returned(root_key: str) -> None:
    payment = Payment()
    token, invoice = parse_challenge(challenge(payment))

    assert invoice == INVOICE
    assert verify(authorization(token, payment.preimage), endpoint=ENDPOINT, now=NOW) == payment.payment_hash


def test_the_client_can_read_what_the_token_is_bound_to(root_key: str) -> None:
    payment = Payment()
    expires_at = NOW + timedelta(minutes=10)
    token, _ = parse_challenge(challenge(payment, expires_at=expires_at))

    macaroon = Macaroon.deserialize(token)
    assert macaroon.location == "timmy-time"
    assert client_caveats(token) == [
        f"payment_hash = {payment.payment_hash}",
        f"endpoint = {ENDPOINT}",
        f"expires = {int(expires_at.timestamp())}",
    ]


def test_the_token_is_standard_base64_of_a_v2_macaroon(root_key: str) -> None:
    token, _ = parse_challenge(challenge(Payment()))

    assert base64.b64decode(token, validate=True)[0] == 2


def test_each_token_has_its_own_identifier(root_key: str) -> None:
    payment = Payment()
    first, second = (Macaroon.deserialize(parse_challenge(challenge(payment))[0]) for _ in range(2))

    assert first.identifier != second.identifier


@pytest.mark.parametrize("scheme", ["LSAT", "l402", "lsat"])
def test_the_older_lsat_scheme_and_any_case_are_accepted(root_key: str, scheme: str) -> None:
    payment = Payment()
    token, _ = parse_challenge(challenge(payment))

    assert verify(authorization(token, payment.preimage, scheme), endpoint=ENDPOINT, now=NOW) == payment.payment_hash


def test_a_url_safe_unpadded_token_is_accepted(root_key: str) -> None:
    payment = Payment()
    token, _ = parse_challenge(challenge(payment))
    url_safe = Macaroon.deserialize(token).serialize()  # pymacaroons' own encoding

    assert verify(authorization(url_safe, payment.preimage), endpoint=ENDPOINT, now=NOW) == payment.payment_hash


def test_an_uppercase_preimage_is_accepted(root_key: str) -> None:
    payment = Payment()
    token, _ = parse_challenge(challenge(payment))

    assert verify(authorization(token, payment.preimage.upper()), endpoint=ENDPOINT, now=NOW) == payment.payment_hash


# --- forged and tampered tokens ---


def test_a_token_minted_with_another_root_key_is_refused(settings: Any, root_key: str) -> None:
    payment = Payment()
    settings.L402_ROOT_KEY = secrets.token_hex(32)
    token, _ = parse_challenge(challenge(payment))
    settings.L402_ROOT_KEY = root_key

    refusal = refused(authorization(token, payment.preimage), root_key)

    assert refusal.code == "bad_signature"
    assert "not issued by this server" in str(refusal)


@pytest.mark.parametrize(
    "caveat",
    ["user = admin", f"endpoint = {ENDPOINT}", "endpoint = /api/v1/other", "expires = 1", "payment_hash = " + "0" * 64],
)
def test_a_caveat_added_by_the_client_is_refused(root_key: str, caveat: str) -> None:
    payment = Payment()
    token, _ = parse_challenge(challenge(payment))
    macaroon = Macaroon.deserialize(token)
    macaroon.add_first_party_caveat(caveat)
    # Adding a caveat is what macaroons allow anyone to do: the HMAC chain still checks out under the root key.
    anything_goes = Verifier()
    anything_goes.satisfy_general(lambda predicate: True)
    assert anything_goes.verify(macaroon, bytes.fromhex(root_key))

    refusal = refused(authorization(macaroon.serialize(), payment.preimage), root_key)

    assert refusal.code == "bad_caveat"


@pytest.mark.parametrize(
    ("original", "altered"),
    [
        (b"endpoint = /api/v1/paid/summarise", b"endpoint = /api/v1/paid/translate"),
        (b"expires = 1772", b"expires = 1999"),
    ],
)
def test_a_token_with_altered_bytes_is_refused(root_key: str, original: bytes, altered: bytes) -> None:
    payment = Payment()
    token, _ = parse_challenge(challenge(payment))
    raw = base64.b64decode(token)
    assert original in raw
    raw = raw.replace(original, altered)

    refusal = refused(authorization(base64.b64encode(raw).decode(), payment.preimage), root_key)

    assert refusal.code == "bad_signature"


def test_a_token_with_an_altered_identifier_is_refused(root_key: str) -> None:
    payment = Payment()
    token, _ = parse_challenge(challenge(payment))
    identifier = Macaroon.deserialize(token).identifier_bytes
    raw = base64.b64decode(token).replace(identifier, identifier[::-1])

    refusal = refused(authorization(base64.b64encode(raw).decode(), payment.preimage), root_key)

    assert refusal.code == "bad_signature"


def test_a_token_with_an_altered_signature_is_refused(root_key: str) -> None:
    payment = Payment()
    token, _ = parse_challenge(challenge(payment))
    raw = bytearray(base64.b64decode(token))
    raw[-1] ^= 0x01

    refusal = refused(authorization(base64.b64encode(raw).decode(), payment.preimage), root_key)

    assert refusal.code == "bad_signature"


def test_swapping_in_the_hash_of_a_preimage_the_client_knows_is_refused(root_key: str) -> None:
    payment, own = Payment(), Payment()
    token, _ = parse_challenge(challenge(payment))
    raw = base64.b64decode(token).replace(payment.payment_hash.encode(), own.payment_hash.encode())

    refusal = refused(authorization(base64.b64encode(raw).decode(), own.preimage), root_key)

    assert refusal.code == "bad_signature"


# --- expiry, endpoint, preimage ---


def test_an_expired_token_is_refused(root_key: str) -> None:
    payment = Payment()
    token, _ = parse_challenge(challenge(payment, expires_at=NOW + timedelta(minutes=10)))

    refusal = refused(authorization(token, payment.preimage), root_key, now=NOW + timedelta(hours=1))

    assert refusal.code == "expired"
    assert "expired at 2026-03-01T12:10:00+00:00" in str(refusal)


def test_a_token_is_refused_from_the_second_it_expires(root_key: str) -> None:
    payment = Payment()
    expires_at = NOW + timedelta(minutes=10)
    header = authorization(parse_challenge(challenge(payment, expires_at=expires_at))[0], payment.preimage)

    assert verify(header, endpoint=ENDPOINT, now=expires_at - timedelta(seconds=1)) == payment.payment_hash
    assert refused(header, root_key, now=expires_at).code == "expired"


def test_a_token_for_another_endpoint_is_refused(root_key: str) -> None:
    payment = Payment()
    token, _ = parse_challenge(challenge(payment, endpoint="/api/v1/paid/translate"))

    refusal = refused(authorization(token, payment.preimage), root_key, endpoint=ENDPOINT)

    assert refusal.code == "wrong_endpoint"
    assert "/api/v1/paid/translate" in str(refusal)


def test_a_preimage_that_does_not_match_the_payment_hash_is_refused(root_key: str) -> None:
    payment = Payment()
    token, _ = parse_challenge(challenge(payment))

    refusal = refused(authorization(token, secrets.token_hex(32)), root_key)

    assert refusal.code == "wrong_preimage"


def test_tokens_for_different_payment_hashes_are_not_interchangeable(root_key: str) -> None:
    first, second = Payment(), Payment()
    first_token, _ = parse_challenge(challenge(first))
    second_token, _ = parse_challenge(challenge(second))

    assert refused(authorization(first_token, second.preimage), root_key).code == "wrong_preimage"
    assert refused(authorization(second_token, first.preimage), root_key).code == "wrong_preimage"
    assert verify(authorization(second_token, second.preimage), endpoint=ENDPOINT, now=NOW) == second.payment_hash


# --- malformed headers ---


def test_a_missing_header_is_refused_with_how_to_pay(root_key: str) -> None:
    for header in (None, "", "   "):
        refusal = refused(header, root_key)
        assert refusal.code == "missing"
        assert "L402 <macaroon>:<preimage>" in str(refusal)


PREIMAGE = "ab" * 32
NOT_A_MACAROON = base64.b64encode(b"hello, world").decode()
TRUNCATED_V2 = base64.b64encode(b"\x02" + bytes(range(40))).decode()


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("Bearer tt_abcdef", "scheme is not L402"),
        ("Basic dXNlcjpwYXNz", "scheme is not L402"),
        ("L402", "not <macaroon>:<preimage>"),
        ("L402 AgEKdGltbXk", "not <macaroon>:<preimage>"),
        (f"L402 :{PREIMAGE}", "not <macaroon>:<preimage>"),
        ("L402 AgEKdGltbXk:", "64 hex characters"),
        ("L402 AgEKdGltbXk:" + "zz" * 32, "64 hex characters"),
        ("L402 AgEKdGltbXk:" + "ab" * 31, "64 hex characters"),
        ("L402 AgEKdGltbXk:" + "ab" * 33, "64 hex characters"),
        (f"L402 AgEKdGltbXk:{PREIMAGE}:{PREIMAGE}", "64 hex characters"),
        (f"L402 !!!not-base64***:{PREIMAGE}", "not a base64-encoded macaroon"),
        (f"L402 A:{PREIMAGE}", "not a base64-encoded macaroon"),
        (f"L402 {NOT_A_MACAROON}:{PREIMAGE}", "not a base64-encoded macaroon"),
        (f"L402 {TRUNCATED_V2}:{PREIMAGE}", "not a base64-encoded macaroon"),
        (f"L402 AgEKdGltbXk:{PREIMAGE}", "not a base64-encoded macaroon"),
    ],
)
def test_a_malformed_header_is_refused(root_key: str, header: str, reason: str) -> None:
    refusal = refused(header, root_key)

    assert refusal.code == "malformed"
    assert reason in str(refusal)


def test_bytes_after_the_signature_are_refused(root_key: str) -> None:
    payment = Payment()
    token, _ = parse_challenge(challenge(payment))
    padded = base64.b64encode(base64.b64decode(token) + b"\x00junk").decode()

    assert refused(authorization(padded, payment.preimage), root_key).code == "malformed"


def test_the_challenge_header_refuses_values_that_would_break_it() -> None:
    with pytest.raises(ValueError):
        challenge_header('abc", evil="1', INVOICE)
    with pytest.raises(ValueError):
        challenge_header("abc", "lnbc\r\nSet-Cookie: x=1")


def test_mint_refuses_a_naive_expiry_and_a_malformed_hash(root_key: str) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        mint(payment_hash=Payment().payment_hash, endpoint=ENDPOINT, expires_at=datetime(2026, 3, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="64 lowercase hex"):
        mint(payment_hash="AB" * 32, endpoint=ENDPOINT, expires_at=NOW)


# --- the root key ---


def test_the_root_key_is_generated_once_with_mode_0600_and_reused(settings: Any, tmp_path: Path) -> None:
    settings.L402_ROOT_KEY = ""
    settings.DATA_DIR = tmp_path
    payment = Payment()

    token, _ = parse_challenge(challenge(payment))
    key_file = tmp_path / "l402_root_key"
    key = key_file.read_text()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key.strip())) == 32
    assert [p.name for p in tmp_path.iterdir()] == ["l402_root_key"]  # no draft left behind

    second, _ = parse_challenge(challenge(payment))
    assert key_file.read_text() == key
    for t in (token, second):
        assert verify(authorization(t, payment.preimage), endpoint=ENDPOINT, now=NOW) == payment.payment_hash
    # A client holding the key file's key can check the signature: that is the key tokens are signed with.
    verifier = Verifier()
    verifier.satisfy_general(lambda predicate: True)
    assert verifier.verify(Macaroon.deserialize(token), bytes.fromhex(key.strip()))


def test_a_key_file_created_first_by_another_process_is_the_one_used(
    settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.L402_ROOT_KEY = ""
    settings.DATA_DIR = tmp_path
    rival_key = secrets.token_hex(32)
    link = os.link

    def rival_wins_the_race(src: Any, dst: Any) -> None:
        Path(dst).write_text(rival_key + "\n")
        link(src, dst)  # now raises FileExistsError, as it would have

    monkeypatch.setattr(l402.os, "link", rival_wins_the_race)
    payment = Payment()
    token, _ = parse_challenge(challenge(payment))
    monkeypatch.undo()

    settings.L402_ROOT_KEY = rival_key
    assert verify(authorization(token, payment.preimage), endpoint=ENDPOINT, now=NOW) == payment.payment_hash
    assert [p.name for p in tmp_path.iterdir()] == ["l402_root_key"]


def test_threads_minting_at_first_use_all_sign_with_one_key(settings: Any, tmp_path: Path) -> None:
    settings.L402_ROOT_KEY = ""
    settings.DATA_DIR = tmp_path
    payment = Payment()
    start = threading.Barrier(8)
    tokens: list[str] = []

    def mint_one() -> None:
        start.wait()
        tokens.append(challenge(payment))

    threads = [threading.Thread(target=mint_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(tokens) == 8
    for header in tokens:
        token, _ = parse_challenge(header)
        assert verify(authorization(token, payment.preimage), endpoint=ENDPOINT, now=NOW) == payment.payment_hash


@pytest.mark.parametrize("generated", [False, True])
def test_the_root_key_is_never_in_the_token(settings: Any, tmp_path: Path, generated: bool) -> None:
    settings.DATA_DIR = tmp_path
    settings.L402_ROOT_KEY = "" if generated else secrets.token_hex(32)
    token, _ = parse_challenge(challenge(Payment()))
    key_hex = (tmp_path / "l402_root_key").read_text().strip() if generated else settings.L402_ROOT_KEY
    key = bytes.fromhex(key_hex)

    raw = base64.b64decode(token)
    assert key not in raw
    assert key_hex.encode() not in raw
    assert key_hex not in token
    assert base64.b64encode(key).decode().rstrip("=") not in token


@pytest.mark.parametrize("bad_key", ["not hex at all", "ab" * 16])
def test_a_bad_root_key_setting_stops_with_a_message_that_does_not_repeat_it(settings: Any, bad_key: str) -> None:
    settings.L402_ROOT_KEY = bad_key

    with pytest.raises(ImproperlyConfigured, match="L402_ROOT_KEY") as error:
        mint(payment_hash=Payment().payment_hash, endpoint=ENDPOINT, expires_at=NOW)

    assert bad_key not in str(error.value)


def test_a_corrupt_key_file_stops_with_a_message_saying_what_to_do(settings: Any, tmp_path: Path) -> None:
    settings.L402_ROOT_KEY = ""
    settings.DATA_DIR = tmp_path
    (tmp_path / "l402_root_key").write_text("")

    with pytest.raises(ImproperlyConfigured, match="delete it to generate a new one"):
        mint(payment_hash=Payment().payment_hash, endpoint=ENDPOINT, expires_at=NOW)
