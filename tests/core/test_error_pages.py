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


def test_a_busy_database_before_the_view_runs_answers_the_api_in_json_and_a_page_in_html(rf, settings):
    import json

    from django.db import OperationalError
    from django.http import HttpResponse

    from apps.core.database import BUSY, DatabaseUnavailableMiddleware

    def session_save_fails(request):
        # What Django's handler leaves when a middleware's database write fails: the mark (note_request_exception)
        # and its own 500.
        request._database_unavailable = (OperationalError("database is locked"), BUSY)
        return HttpResponse("Server Error", status=500)

    settings.DATABASE_BUSY_SECONDS = 1
    middleware = DatabaseUnavailableMiddleware(session_save_fails)
    api = middleware(rf.post("/api/v1/tasks"))
    assert (api.status_code, api["Content-Type"], api["Retry-After"]) == (503, "application/json", "1")
    assert json.loads(api.content)["retry_after"] == 1 and "database is busy" in json.loads(api.content)["detail"]
    page = middleware(rf.post("/swarm/"))
    assert page.status_code == 503 and "<h1>The database is busy</h1>" in page.content.decode()
