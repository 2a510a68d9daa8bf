from collections.abc import Iterator

import pytest

from apps.providers.models import Provider
from apps.swarm.models import Agent
from apps.swarm.services import agents_bring_online
from tests.factories import AgentFactory
from tests.llm_servers import OllamaServer, refused_url
from tests.providers.factories import ProviderFactory


def provider_at(name: str, url: str, priority: int = 1, **fields: object) -> Provider:
    fields = {"connect_timeout_seconds": 1.0, "read_timeout_seconds": 5.0, **fields}
    return ProviderFactory(name=name, kind=Provider.Kind.OLLAMA, base_url=url, priority=priority, **fields)


@pytest.fixture
def server() -> Iterator[OllamaServer]:
    with OllamaServer() as running:
        yield running


@pytest.fixture
def ollama(db: None, server: OllamaServer) -> OllamaServer:
    """The only provider: a real HTTP server speaking Ollama's protocol that echoes the last user message."""
    provider_at("ollama", server.url, model=server.models[0])
    return server


@pytest.fixture
def all_down(db: None) -> Iterator[OllamaServer]:
    """Two providers and neither answers: nothing listens at the first, the second answers HTTP 500."""
    with OllamaServer(mode="error500") as broken:
        provider_at("local", refused_url(), 1)
        provider_at("backup", broken.url, 2)
        yield broken


@pytest.fixture
def personas(db: None) -> dict[str, Agent]:
    """The persona agents of the data migration, online as they are once a worker has started.

    A test on transactional_db that runs after another one finds the tables emptied: it gets an echo agent.
    """
    if not Agent.objects.filter(name="echo").exists():
        AgentFactory(name="echo", persona="echo", status=Agent.Status.OFFLINE)
    agents_bring_online(source="test")
    return {agent.name: agent for agent in Agent.objects.all()}
