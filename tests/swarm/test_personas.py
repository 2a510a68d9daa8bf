import random

import pytest

from apps.swarm.models import Agent, Persona, Task
from apps.swarm.services import auction_close, persona_bid_amount, task_post
from tests.factories import AgentFactory
from tests.swarm.helpers import after_auction

SPECIALITIES = {
    "echo": "research",
    "forge": "coding",
    "seer": "analytics",
    "quill": "writing",
    "helm": "devops",
    "mace": "security",
}


def test_the_migration_loads_six_bidding_personas_and_timmy(db):
    agents = {agent.name: agent for agent in Agent.objects.all()}
    assert set(agents) == {"timmy", *SPECIALITIES}
    for name, speciality in SPECIALITIES.items():
        agent = agents[name]
        assert agent.persona == name
        assert speciality in agent.capabilities
        assert agent.keywords, f"{name} has no keywords"
        assert agent.base_bid_sats > 0
        assert agent.bid_jitter_sats > 0
        assert agent.bids_on_tasks
    assert agents["timmy"].persona == Persona.TIMMY
    assert not agents["timmy"].bids_on_tasks


def test_personas_start_offline_until_a_worker_brings_them_online(db):
    assert set(Agent.objects.values_list("status", flat=True)) == {Agent.Status.OFFLINE}


def test_timmy_orchestrates_and_never_bids(personas):
    task = task_post(description="Research the history of the Lightning Network")
    bidders = set(task.bids.values_list("agent__name", flat=True))
    assert bidders == set(SPECIALITIES)
    assert personas["timmy"].status == Agent.Status.IDLE


def test_a_persona_bids_its_base_on_a_matching_task_and_triple_off_topic():
    agent = AgentFactory.build(keywords=["research"], base_bid_sats=80, bid_jitter_sats=10)
    rng = random.Random(7)
    on_topic = {persona_bid_amount(agent, "Please RESEARCH sovereign computing", rng) for _ in range(200)}
    off_topic = {persona_bid_amount(agent, "Deploy the server", rng) for _ in range(200)}
    assert min(on_topic) >= 70 and max(on_topic) <= 90
    assert min(off_topic) >= 230 and max(off_topic) <= 250
    assert len(on_topic) > 1, "the jitter should vary the bids"


def test_a_keyword_matches_the_start_of_a_word():
    agent = AgentFactory.build(keywords=["summar"], base_bid_sats=50, bid_jitter_sats=0)
    assert persona_bid_amount(agent, "Summarise these notes", random.Random()) == 50
    assert persona_bid_amount(agent, "A summary, please", random.Random()) == 50
    assert persona_bid_amount(agent, "Notes to consummate", random.Random()) == 150


def test_echo_bids_low_on_a_task_that_asks_it_to_look_something_up(db):
    echo = Agent.objects.get(name="echo")
    assert "look up" in echo.keywords
    rng = random.Random(3)
    assert all(70 <= persona_bid_amount(echo, "Look up the block height", rng) <= 90 for _ in range(50))
    assert all(230 <= persona_bid_amount(echo, "Look at the tip, then up", rng) <= 250 for _ in range(50))


def test_an_empty_keyword_matches_nothing():
    agent = AgentFactory.build(keywords=["", "!"], base_bid_sats=10, bid_jitter_sats=0)
    assert persona_bid_amount(agent, "anything", random.Random()) == 30


def test_a_bid_is_never_below_one_sat():
    agent = AgentFactory.build(keywords=["x"], base_bid_sats=1, bid_jitter_sats=50)
    assert min(persona_bid_amount(agent, "x", random.Random(seed)) for seed in range(100)) == 1


@pytest.mark.parametrize(
    ("description", "winner"),
    [
        ("Research the history of the Lightning Network", "echo"),
        ("Fix the bug in the python code", "forge"),
        ("Analyse the trend in last month's metrics", "seer"),
        ("Write a blog post about the release", "quill"),
        ("Deploy the new docker image to the server", "helm"),
        ("Audit the login flow for vulnerabilities", "mace"),
    ],
)
def test_the_specialist_wins_the_auction_when_every_persona_is_idle(personas, description, winner):
    task = task_post(description=description, rng=random.Random(1))
    assert task.bids.count() == len(SPECIALITIES)
    task = auction_close(task_id=task.pk, now=after_auction(task))
    assert task.status == Task.Status.ASSIGNED
    assert task.assigned_agent is not None
    assert task.assigned_agent.name == winner


def test_forge_beats_echo_on_a_code_task_when_only_they_are_idle(personas):
    Agent.objects.exclude(name__in=["echo", "forge"]).update(status=Agent.Status.OFFLINE)
    task = task_post(description="fix the bug in the python code")
    assert set(task.bids.values_list("agent__name", flat=True)) == {"echo", "forge"}
    task = auction_close(task_id=task.pk, now=after_auction(task))
    assert task.assigned_agent is not None
    assert task.assigned_agent.name == "forge"
