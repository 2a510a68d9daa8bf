import pytest

from apps.swarm.models import Agent
from apps.swarm.services import agents_bring_online


@pytest.fixture
def personas(db: None) -> dict[str, Agent]:
    """The persona agents loaded by the data migration, online as they are once a worker has started."""
    agents_bring_online(source="test")
    return {agent.name: agent for agent in Agent.objects.all()}
