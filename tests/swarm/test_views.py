import random
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.events.models import EventType
from apps.swarm.models import Agent, Task
from apps.swarm.services import auction_close, task_fail, task_post
from tests.factories import AgentFactory, BidFactory, TaskFactory
from tests.swarm.helpers import after_auction

INDEX = reverse("swarm:index")


def test_the_swarm_page_shows_open_auctions_with_their_bids(staff_client, personas):
    task = task_post(description="Research the history of the Lightning Network", rng=random.Random(2))
    response = staff_client.get(INDEX)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'Open auctions <span class="count">1</span>' in html
    assert f'href="{task.get_absolute_url()}">Task {task.pk}</a>: Research the history' in html
    for bid in task.bids.select_related("agent"):
        assert f"<strong>{bid.amount_sats} sats</strong> by {bid.agent.name}" in html
    # The lowest bid is listed first.
    assert html.index(" by echo</li>") < html.index(" by forge</li>")


def test_the_swarm_page_groups_tasks_by_status_with_counts(staff_client, personas):
    posted = task_post(description="Research sats")
    won = auction_close(task_id=posted.pk, now=after_auction(posted))
    failed = task_post(description="Write a poem")
    task_fail(task_id=failed.pk, reason="Nobody wanted it.")
    html = staff_client.get(INDEX).content.decode()
    assert '<span class="badge status-assigned">assigned 1</span>' in html
    assert '<span class="badge status-failed">failed 1</span>' in html
    assert '<span class="badge status-bidding">bidding 0</span>' in html
    assert "<h3>Assigned</h3>" in html and "<h3>Failed</h3>" in html
    assert f"→ echo for {won.winning_bid_sats} sats" in html
    assert "Nobody wanted it." in html
    assert "No auction is open." in html


def test_the_swarm_page_lists_agents_with_status_and_win_counts(staff_client, personas):
    for n in range(2):
        task = task_post(description=f"Research topic {n}")
        auction_close(task_id=task.pk, now=after_auction(task))
    Agent.objects.filter(name="mace").update(status=Agent.Status.OFFLINE)
    response = staff_client.get(INDEX)
    agents = {agent.name: agent for agent in response.context["agents"]}
    assert agents["echo"].wins == 2
    assert agents["forge"].wins == 0
    html = response.content.decode()
    assert '<span class="badge agent-offline">offline</span>' in html
    assert '<span class="badge agent-idle">idle</span>' in html
    assert "Echo (research)" in html


def test_a_failed_task_does_not_count_as_a_win(staff_client, personas):
    task = task_post(description="Research sats")
    auction_close(task_id=task.pk, now=after_auction(task))
    task_fail(task_id=task.pk, reason="gave up")
    agents = {agent.name: agent for agent in staff_client.get(INDEX).context["agents"]}
    assert agents["echo"].wins == 0


def test_posting_the_form_creates_a_task_and_redirects_with_a_message(staff_client, staff_user, personas):
    response = staff_client.post(INDEX, {"description": "Research the mempool"}, follow=True)
    assert response.redirect_chain == [(INDEX, 302)]
    task = Task.objects.get()
    assert task.status == Task.Status.BIDDING
    assert task.posted_by == staff_user
    html = response.content.decode()
    assert f"Task {task.pk} posted; 6 bid(s) so far. The auction closes in {settings.AUCTION_SECONDS} s." in html


@pytest.mark.parametrize("description", ["", "   "])
def test_posting_an_empty_description_shows_the_error_and_creates_nothing(staff_client, personas, description):
    response = staff_client.post(INDEX, {"description": description})
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    assert not Task.objects.exists()


def test_posting_an_oversized_description_shows_the_error_and_creates_nothing(staff_client, personas):
    response = staff_client.post(INDEX, {"description": "x" * 10_001})
    assert response.status_code == 400
    assert "Ensure this value has at most 10000 characters" in response.content.decode()
    assert not Task.objects.exists()


def test_the_form_refuses_a_post_without_its_csrf_token(staff_user):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(staff_user)
    assert browser.post(INDEX, {"description": "Research it"}).status_code == 403
    assert not Task.objects.exists()


def test_the_htmx_refresh_returns_only_the_board(staff_client, personas):
    task_post(description="Research the mempool")
    response = staff_client.get(INDEX, headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert [t.name for t in response.templates] == ["swarm/_board.html", "swarm/_no_worker_notice.html"]
    html = response.content.decode()
    assert html.startswith('<div id="swarm-board"')
    assert "<html" not in html
    assert "Post a task" not in html
    assert "Research the mempool" in html


def test_the_full_page_includes_the_board_and_the_form(staff_client, personas):
    html = staff_client.get(INDEX).content.decode()
    assert "<html" in html
    assert '<div id="swarm-board"' in html
    assert 'name="description"' in html


def _fill_board(n: int) -> None:
    agents = [AgentFactory() for _ in range(5)]
    closes = timezone.now() + timedelta(seconds=30)
    for _ in range(n):
        auction = TaskFactory(status=Task.Status.BIDDING, auction_closes_at=closes)
        for agent in agents:
            BidFactory(task=auction, agent=agent)
        for status in (Task.Status.ASSIGNED, Task.Status.RUNNING, Task.Status.COMPLETED, Task.Status.FAILED):
            TaskFactory(status=status, assigned_agent=agents[0], winning_bid_sats=10, failure_reason="x")


def test_the_swarm_page_does_not_query_per_task_or_bid(staff_client, personas, django_assert_max_num_queries):
    _fill_board(1)
    with CaptureQueriesContext(connection) as small:
        assert staff_client.get(INDEX).status_code == 200
    # Session, user, auctions, their bids, four status lists, counts, agents, tasks waiting with no worker.
    assert len(small.captured_queries) <= 12  # including the navigation's count of upgrades waiting
    _fill_board(30)
    with django_assert_max_num_queries(len(small.captured_queries)):
        response = staff_client.get(INDEX)
    assert response.content.decode().count('<ol class="bids">') == 31
    with django_assert_max_num_queries(len(small.captured_queries)):
        staff_client.get(INDEX, headers={"HX-Request": "true"})


def test_the_task_page_shows_the_task_its_bids_and_its_events(staff_client, staff_user, personas):
    task = task_post(description="Research the mempool", posted_by=staff_user)
    task = auction_close(task_id=task.pk, now=after_auction(task))
    response = staff_client.get(task.get_absolute_url())
    assert response.status_code == 200
    html = response.content.decode()
    assert f"Task {task.pk}" in html
    assert f"by {staff_user.username}" in html
    assert '<span class="badge status-assigned">assigned</span>' in html
    assert f"echo for {task.winning_bid_sats} sats" in html
    assert html.count("sats</strong> by") == 6
    # Each bid says how well the task matched the bidder.
    for bid in task.bids.all():
        assert (
            f'by {bid.agent.name} at {bid.created_at:%H:%M:%S} <span class="muted bid-match">match {bid.match:.3f}'
            in html
        )
    for event_type in (EventType.TASK_CREATED, EventType.TASK_BIDDING, EventType.TASK_ASSIGNED):
        assert f'<code class="etype">{event_type}</code>' in html


def test_the_task_page_of_a_missing_task_is_404(staff_client):
    assert staff_client.get(reverse("swarm:task", args=[987654])).status_code == 404


def test_the_task_page_escapes_the_description(staff_client, personas):
    task = task_post(description="<script>alert(1)</script> research")
    html = staff_client.get(task.get_absolute_url()).content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_swarm_pages_are_for_staff_only(plain_client, client, personas):
    task = task_post(description="Research it")
    for url in (INDEX, task.get_absolute_url()):
        assert plain_client.get(url).status_code == 403
        assert client.get(url).status_code == 302
    assert plain_client.post(INDEX, {"description": "Research more"}).status_code == 403
    assert Task.objects.count() == 1
