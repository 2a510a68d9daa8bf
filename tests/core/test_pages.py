import pytest
from django.urls import reverse

from apps.core.services import worker_register
from apps.swarm.models import Task
from tests.factories import TaskFactory

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


# --- tasks waiting while no worker runs ---

WAITING_NOTICE = "3 tasks are waiting: no worker is running."
START_HINT = "Start one with <code>make run</code> (or <code>python manage.py run_worker</code>)."


@pytest.fixture
def waiting_tasks(db) -> list[Task]:
    """Three open tasks and two finished ones."""
    open_ = [TaskFactory(status=status) for status in (Task.Status.PENDING, Task.Status.BIDDING, Task.Status.RUNNING)]
    TaskFactory(status=Task.Status.COMPLETED)
    TaskFactory(status=Task.Status.FAILED)
    return open_


@pytest.mark.parametrize("url", ["/", "/swarm/"])
def test_the_home_and_swarm_pages_say_tasks_are_waiting_when_no_worker_is_running(staff_client, waiting_tasks, url):
    html = " ".join(staff_client.get(url).content.decode().split())
    assert WAITING_NOTICE in html
    assert START_HINT in html


def test_the_swarm_board_refresh_keeps_saying_tasks_are_waiting_until_a_worker_starts(staff_client, waiting_tasks):
    def board() -> str:
        return " ".join(staff_client.get("/swarm/", headers={"HX-Request": "true"}).content.decode().split())

    assert WAITING_NOTICE in board()
    worker_register(worker_id="host:1")
    assert "waiting: no worker" not in board()


def test_one_waiting_task_is_counted_in_the_singular(staff_client, db):
    TaskFactory(status=Task.Status.ASSIGNED)
    assert "1 task is waiting: no worker is running." in " ".join(staff_client.get("/").content.decode().split())


@pytest.mark.parametrize("url", ["/", "/swarm/"])
def test_no_waiting_notice_while_a_worker_is_alive(staff_client, waiting_tasks, url):
    worker_register(worker_id="host:1")
    assert "waiting: no worker" not in staff_client.get(url).content.decode()


@pytest.mark.parametrize("url", ["/", "/swarm/"])
def test_no_waiting_notice_when_only_finished_tasks_exist(staff_client, db, url):
    TaskFactory(status=Task.Status.COMPLETED)
    TaskFactory(status=Task.Status.FAILED)
    assert "waiting: no worker" not in staff_client.get(url).content.decode()


def test_a_waiting_task_page_says_no_worker_is_running_and_a_finished_one_does_not(staff_client, waiting_tasks):
    html = " ".join(staff_client.get(waiting_tasks[0].get_absolute_url()).content.decode().split())
    assert f"This task is waiting: no worker is running. {START_HINT}" in html
    done = Task.objects.get(status=Task.Status.COMPLETED)
    assert "waiting: no worker" not in staff_client.get(done.get_absolute_url()).content.decode()
    worker_register(worker_id="host:1")
    assert "waiting: no worker" not in staff_client.get(waiting_tasks[0].get_absolute_url()).content.decode()
