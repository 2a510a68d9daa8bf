from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from apps.events.models import EventType
from apps.swarm.models import Agent, Task
from apps.swarm.services import agents_bring_online, task_post
from tests.factories import AgentFactory, BidFactory, StaffFactory, TaskFactory
from tests.swarm.helpers import events_of

CHANGELIST = reverse("admin:swarm_task_changelist")


def fail_selected(client: Client, tasks: list[Task], **extra: str):
    return client.post(
        CHANGELIST,
        {"action": "fail_tasks", "_selected_action": [t.pk for t in tasks], "confirm": "yes", **extra},
        follow=True,
    )


def test_failing_tasks_asks_for_confirmation_first_and_changes_nothing_until_then(admin_client):
    bidding = TaskFactory(status=Task.Status.BIDDING, description="Research moths")
    done = TaskFactory(status=Task.Status.COMPLETED)
    response = admin_client.post(CHANGELIST, {"action": "fail_tasks", "_selected_action": [bidding.pk, done.pk]})
    page = response.content.decode()
    assert response.status_code == 200
    assert "Research moths" in page
    assert "1 selected task already finished" in page
    bidding.refresh_from_db()
    assert bidding.status == Task.Status.BIDDING


def test_failing_selected_tasks_fails_the_open_ones_and_reports_the_count(admin_client, admin_user):
    agent = AgentFactory(name="ada")
    bidding = TaskFactory(status=Task.Status.BIDDING)
    assigned = TaskFactory(status=Task.Status.ASSIGNED, assigned_agent=agent)
    done = TaskFactory(status=Task.Status.COMPLETED, assigned_agent=agent)
    response = fail_selected(admin_client, [bidding, assigned, done], reason="stuck")
    assert response.status_code == 200
    assert "Failed 2 task(s)." in response.content.decode()
    statuses = dict(Task.objects.values_list("pk", "status"))
    assert statuses == {bidding.pk: "failed", assigned.pk: "failed", done.pk: "completed"}
    for task in (bidding, assigned):
        task.refresh_from_db()
        assert task.failure_reason == f"Failed by {admin_user.username} in the admin: stuck"
        [event] = events_of(task, EventType.TASK_FAILED)
        assert event.data["reason"] == task.failure_reason
    assert not events_of(done, EventType.TASK_FAILED)


def test_the_fail_action_needs_the_change_permission(db):
    viewer = StaffFactory(username="viewer")
    viewer.user_permissions.add(Permission.objects.get(codename="view_task"))
    client = Client()
    client.force_login(viewer)
    task = TaskFactory(status=Task.Status.BIDDING)
    page = client.get(CHANGELIST)
    assert page.status_code == 200
    assert "fail_tasks" not in page.content.decode()
    fail_selected(client, [task])
    task.refresh_from_db()
    assert task.status == Task.Status.BIDDING


def test_the_task_admin_shows_bids_inline_and_allows_no_adding(admin_client):
    bid = BidFactory(amount_sats=77, agent=AgentFactory(name="ada"))
    assert admin_client.get(reverse("admin:swarm_task_add")).status_code == 403
    page = admin_client.get(reverse("admin:swarm_task_change", args=[bid.task.pk]))
    assert page.status_code == 200
    assert "77" in page.content.decode()


def test_the_admin_lists_of_the_swarm_render(admin_client):
    BidFactory()
    for name in ("task", "agent", "bid"):
        assert admin_client.get(reverse(f"admin:swarm_{name}_changelist")).status_code == 200


def test_an_operator_edits_a_personas_profile_in_the_admin_and_its_next_bid_uses_it(admin_client):
    helm = Agent.objects.get(name="helm")
    url = reverse("admin:swarm_agent_change", args=[helm.pk])
    page = admin_client.get(url).content.decode()
    assert "Typical tasks:" in page
    assert "tasks are matched with this by meaning" in page
    form = {
        "name": "helm",
        "persona": "helm",
        "bids_on_tasks": "on",
        "description": "Baking: breads and cakes.",
        "capabilities": '["baking"]',
        "keywords": '["bread"]',
        "profile": "Bakes bread.\n- Bake a sourdough loaf",
        "base_bid_sats": "110",
        "bid_jitter_sats": "0",
        "off_topic_multiplier": "3",
    }
    response = admin_client.post(url, form)
    assert response.status_code == 302, response.content.decode()
    agents_bring_online(source="test")
    task = task_post(description="Bake a sourdough loaf for the weekend")
    assert task.bids.order_by("amount_sats").first().agent.name == "helm"
    assert task.bids.get(agent__name="helm").amount_sats == 110
