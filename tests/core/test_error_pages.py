import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.fixture
def product(settings):
    """As `make run` serves: DEBUG off."""
    settings.DEBUG = False
    settings.ROOT_URLCONF = "tests.core.urls_failing"
    return settings


def test_a_wrong_address_gets_a_friendly_page_that_lists_no_url_patterns(product, staff_client):
    response = staff_client.get("/no/such/page")
    assert response.status_code == 404
    body = response.content.decode()
    assert "Nothing here" in body and "Back to the dashboard" in body
    assert "URLconf" not in body and "test-only/fails" not in body


def test_a_failing_page_gets_a_friendly_500_that_reveals_nothing(product, staff_user):
    client = Client(raise_request_exception=False)
    client.force_login(staff_user)
    response = client.get("/test-only/fails")
    assert response.status_code == 500
    body = response.content.decode()
    assert "Something went wrong" in body
    assert "secret internals" not in body and "Traceback" not in body and "RuntimeError" not in body
