import pytest
from django.urls import reverse

PAGES = [
    "/",
    "/chat",
    "/swarm/",
    "/swarm/events",
    "/swarm/live",
    "/lightning/ledger",
    "/memory",
    "/self-modify/queue",
    "/router/status",
]


@pytest.mark.parametrize("url", PAGES)
def test_every_dashboard_page_sends_anonymous_visitors_to_login(client, db, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


@pytest.mark.parametrize("url", PAGES)
def test_every_dashboard_page_refuses_non_staff_users(plain_client, url):
    response = plain_client.get(url)
    assert response.status_code == 403
    assert b"Staff only" in response.content


@pytest.mark.parametrize("url", PAGES)
def test_every_dashboard_page_renders_with_navigation_to_all_others(staff_client, url):
    response = staff_client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    for target in PAGES[1:]:
        assert f'href="{target}"' in html
    assert 'href="/admin/"' in html


def test_login_page_explains_where_the_first_password_is(client, db):
    response = client.get(reverse("login"))
    assert response.status_code == 200
    assert b"admin-password.txt" in response.content
