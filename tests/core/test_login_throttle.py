"""Failed sign-ins are throttled per account and per client address (counted in the database), on the login page
and the admin's: at the limit, sign-ins are refused with the reason until the window ends, without the password
being checked, and each refusal is an `auth.login_throttled` event."""

import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db.models import F
from django.test import Client

from apps.core.models import LoginFailureCount
from apps.events.models import Event
from tests.factories import StaffFactory, UserFactory

PASSWORD = "correct horse battery staple"
WRONG = "Tr0ub4dor&3"
LOGIN = "/accounts/login/"
ADMIN_LOGIN = "/admin/login/"
ACCOUNT_LOCKED = "Too many failed sign-ins for this account; try again in 15 minutes."
ADDRESS_LOCKED = "Too many failed sign-ins from this address; try again in 15 minutes."


def sign_in(client: Client, username: str, password: str, url: str = LOGIN):
    return client.post(url, {"username": username, "password": password})


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def fail(client: Client, username: str, times: int, url: str = LOGIN) -> None:
    for _ in range(times):
        response = sign_in(client, username, WRONG, url)
        assert response.status_code == 200 and not signed_in(client)


def end_the_window() -> None:
    LoginFailureCount.objects.update(
        window_started_at=F("window_started_at") - timedelta(minutes=settings.LOGIN_LOCKOUT_MINUTES)
    )


@pytest.fixture
def ada(db):
    return UserFactory(username="ada")


def test_five_wrong_passwords_then_the_right_one_is_refused_with_the_reason(client, ada):
    fail(client, "ada", 4)
    assert "didn't match" in sign_in(client, "ada", WRONG).content.decode()
    response = sign_in(client, "ada", PASSWORD)
    assert response.status_code == 200
    assert not signed_in(client)
    page = response.content.decode()
    assert ACCOUNT_LOCKED in page and "didn't match" not in page
    # The lockout follows the account to any address.
    elsewhere = Client(REMOTE_ADDR="10.0.0.2")
    assert ACCOUNT_LOCKED in sign_in(elsewhere, "ada", PASSWORD).content.decode()
    assert not signed_in(elsewhere)


def test_each_refused_sign_in_is_an_event_with_the_username_and_address_never_the_password(client, ada):
    fail(client, "ada", 5)
    sign_in(client, "ada", PASSWORD)
    sign_in(client, "ada", WRONG)
    events = list(Event.objects.filter(event_type="auth.login_throttled").order_by("id"))
    assert [(e.data["username"], e.data["address"], e.data["locked"]) for e in events] == [
        ("ada", "127.0.0.1", "account"),
        ("ada", "127.0.0.1", "account"),
    ]
    stored = json.dumps(list(Event.objects.values("data", "source")))
    assert PASSWORD not in stored and WRONG not in stored


def test_a_refused_sign_in_does_not_check_the_password(client, ada):
    # A hash with fewer iterations than the default is re-hashed whenever the right password is checked against it,
    # so an unchanged hash shows that the password was not checked.
    weak = PBKDF2PasswordHasher().encode(PASSWORD, PBKDF2PasswordHasher().salt(), iterations=1000)
    ada.password = weak
    ada.save(update_fields=["password"])
    fail(client, "ada", 5)
    assert ACCOUNT_LOCKED in sign_in(client, "ada", PASSWORD).content.decode()
    ada.refresh_from_db()
    assert ada.password == weak
    end_the_window()
    sign_in(client, "ada", PASSWORD)
    ada.refresh_from_db()
    assert signed_in(client) and ada.password != weak


def test_the_account_can_sign_in_again_once_the_window_has_passed(client, ada):
    fail(client, "ada", 5)
    assert ACCOUNT_LOCKED in sign_in(client, "ada", PASSWORD).content.decode()
    end_the_window()
    response = sign_in(client, "ada", PASSWORD)
    assert response.status_code == 302 and signed_in(client)
    assert not LoginFailureCount.objects.filter(kind="account").exists()


def test_another_account_from_another_address_is_unaffected(client, ada):
    UserFactory(username="grace")
    fail(client, "ada", 5)
    other = Client(REMOTE_ADDR="10.0.0.2")
    response = sign_in(other, "grace", PASSWORD)
    assert response.status_code == 302 and signed_in(other)


def test_a_successful_sign_in_clears_the_accounts_failures(client, ada):
    fail(client, "ada", 4)
    assert sign_in(client, "ada", PASSWORD).status_code == 302
    client.post("/accounts/logout/")
    fail(client, "ada", 4)
    assert sign_in(client, "ada", PASSWORD).status_code == 302 and signed_in(client)


def test_an_address_with_too_many_failures_is_refused_for_every_account(client, ada, settings):
    settings.LOGIN_FAILURES_PER_ADDRESS = 3
    for name in ("someone", "anyone", "nobody"):
        fail(client, name, 1)
    response = sign_in(client, "ada", PASSWORD)
    assert ADDRESS_LOCKED in response.content.decode() and not signed_in(client)
    other = Client(REMOTE_ADDR="10.0.0.2")
    assert sign_in(other, "ada", PASSWORD).status_code == 302 and signed_in(other)


def test_the_admin_login_is_throttled_too(client, db):
    StaffFactory(username="ops")
    fail(client, "ops", 5, ADMIN_LOGIN)
    response = sign_in(client, "ops", PASSWORD, ADMIN_LOGIN)
    assert response.status_code == 200 and not signed_in(client)
    assert ACCOUNT_LOCKED in response.content.decode()
    # The two login pages count together: the lockout holds on the dashboard's page too.
    assert ACCOUNT_LOCKED in sign_in(client, "ops", PASSWORD).content.decode()
