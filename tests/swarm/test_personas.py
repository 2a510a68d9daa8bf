import random
from collections.abc import Sequence

import numpy as np
import pytest

from apps.events.models import EventType
from apps.memory.embeddings import HashedNgramEmbedder
from apps.swarm.matching import MISMATCH_LEAD, Match, forget_profiles, profile_pieces, task_matches
from apps.swarm.models import Agent, Persona, Task
from apps.swarm.services import auction_close, persona_bid_amount, task_post
from tests.factories import AgentFactory
from tests.swarm.helpers import after_auction, events_of

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
        assert "Typical tasks:" in agent.profile, f"{name} has no profile"
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


def match(similarity: float, best: float) -> Match:
    return Match(similarity=similarity, best=best, rank=1 if similarity == best else 2)


def test_the_best_match_bids_its_base_and_a_clear_mismatch_three_times_it():
    agent = AgentFactory.build(base_bid_sats=80, bid_jitter_sats=10)
    rng = random.Random(7)
    best = {persona_bid_amount(agent, match(0.52, 0.52), rng) for _ in range(200)}
    mismatch = {persona_bid_amount(agent, match(0.20, 0.52), rng) for _ in range(200)}
    assert min(best) >= 70 and max(best) <= 90
    assert min(mismatch) >= 230 and max(mismatch) <= 250
    assert len(best) > 1, "the jitter should vary the bids"


def test_a_bid_rises_with_how_far_the_agent_is_behind_the_best_match():
    agent = AgentFactory.build(base_bid_sats=100, bid_jitter_sats=0)
    leads = [0.0, MISMATCH_LEAD / 4, MISMATCH_LEAD / 2, MISMATCH_LEAD, MISMATCH_LEAD * 3]
    bids = [persona_bid_amount(agent, match(0.5 - lead, 0.5), random.Random()) for lead in leads]
    assert bids == sorted(bids)
    assert bids[0] == 100 and 100 < bids[1] < bids[2] < bids[3] == bids[4] == 300


def test_an_off_topic_multiplier_of_one_bids_the_base_whatever_the_match():
    agent = AgentFactory.build(base_bid_sats=60, bid_jitter_sats=0, off_topic_multiplier=1)
    assert persona_bid_amount(agent, match(-0.2, 0.9), random.Random()) == 60


def test_a_bid_is_never_below_one_sat():
    agent = AgentFactory.build(base_bid_sats=1, bid_jitter_sats=50)
    assert min(persona_bid_amount(agent, match(0.5, 0.5), random.Random(seed)) for seed in range(100)) == 1


def test_the_code_task_reaches_forge_although_it_says_write_and_forge_is_dearer_than_quill(personas):
    assert personas["forge"].base_bid_sats > personas["quill"].base_bid_sats
    description = "Write a Python function is_palindrome(s) that ignores case"
    for seed in range(10):
        task = task_post(description=description, rng=random.Random(seed))
        task = auction_close(task_id=task.pk, now=after_auction(task))
        assert task.assigned_agent is not None
        assert task.assigned_agent.name == "forge", (
            f"seed {seed}: {list(task.bids.values_list('agent__name', 'amount_sats'))}"
        )


def test_every_bid_event_says_how_well_the_task_matched_and_its_rank(personas):
    task = task_post(description="Audit the login flow for vulnerabilities")
    events = {e.data["agent"]: e.data for e in events_of(task, EventType.BID_SUBMITTED)}
    assert set(events) == set(SPECIALITIES)
    assert events["mace"]["rank"] == 1
    assert events["mace"]["match"] == max(data["match"] for data in events.values())
    assert sorted(data["rank"] for data in events.values())[0] == 1
    for name, data in events.items():
        bid = task.bids.get(agent__name=name)
        assert data["match"] == round(data["match"], 3) == bid.match
        assert data["amount_sats"] == bid.amount_sats


def test_an_agent_whose_profile_an_operator_edits_bids_by_its_new_profile(personas):
    description = "Bake a sourdough loaf and write down the recipe"
    before = task_post(description=description, rng=random.Random(1))
    assert auction_close(task_id=before.pk, now=after_auction(before)).assigned_agent.name != "helm"
    helm = personas["helm"]
    helm.description = "Baking: breads, cakes and recipes."
    helm.capabilities, helm.keywords = ["baking"], ["bread", "sourdough"]
    helm.profile = "Bakes bread and cakes.\n- Bake a sourdough loaf\n- Write down a baking recipe"
    helm.save()
    after = task_post(description=description, rng=random.Random(1))
    assert auction_close(task_id=after.pk, now=after_auction(after)).assigned_agent.name == "helm"


class CountingEmbedder(HashedNgramEmbedder):
    """The hashed embedder, keeping what it was asked to embed."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return super().embed(texts)


def test_tasks_are_embedded_in_one_batch_and_profiles_once_until_they_change(db):
    forget_profiles()
    embedder = CountingEmbedder()
    agents = [
        AgentFactory.build(pk=1, name="ada", description="Research", profile="- Find sources"),
        AgentFactory.build(pk=2, name="bob", description="Code", profile="- Fix a bug"),
    ]
    tasks = ["Research moths", "Fix the crash", "Write a poem"]
    first = task_matches(tasks, agents, embedder=embedder)
    assert [len(m) for m in first] == [2, 2, 2]
    assert embedder.calls[0] == tasks
    assert len(embedder.calls) == 2  # the tasks, then both profiles together
    task_matches(tasks, agents, embedder=embedder)
    assert embedder.calls[2:] == [tasks]  # the profiles came from the cache
    agents[1].profile = "- Fix a bug\n- Review a diff"
    task_matches(tasks, agents, embedder=embedder)
    assert embedder.calls[3:] == [tasks, profile_pieces(agents[1])]  # only the edited profile again
    forget_profiles()


def test_a_profile_is_its_description_capabilities_keywords_and_lines_without_headings():
    agent = AgentFactory.build(
        description="Code: writes programs.",
        capabilities=["code_review", "debugging"],
        keywords=["python"],
        profile="Forge writes code.\nTypical tasks:\n- Fix a bug\n\n* Review a diff",
    )
    assert profile_pieces(agent) == [
        "Code: writes programs.",
        "Capabilities: code review, debugging.",
        "Topics: python.",
        "Forge writes code.",
        "Fix a bug",
        "Review a diff",
    ]
    assert profile_pieces(AgentFactory.build(name="blank", description="", capabilities=[], keywords=[])) == ["blank"]


@pytest.mark.parametrize(
    ("description", "winner"),
    [
        ("Research the history of the Lightning Network", "echo"),
        ("Fix the bug in the python code", "forge"),
        ("Write a Python function is_palindrome(s) that ignores case", "forge"),
        ("write a function that returns the n-th Fibonacci number", "forge"),
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
