"""How well a task matches each agent, judged by meaning: the task's embedding against the agent's profile.

An agent's profile is its description, its capabilities, its words (`keywords`) and its `profile` text, one
piece per line (typical tasks, one a line, work best). Each piece is embedded on its own with the configured
embedder (apps.memory.embeddings) and an agent's similarity to a task is the mean cosine of its TOP_PIECES
best-matching pieces: a long profile is not diluted into one average vector, and one stray line does not decide.

The price of a bid follows from the agent's lead: how far its similarity is behind the best-matching agent it
competes with (every online agent that bids on tasks). The best match bids its base price; the others bid more,
geometrically, up to base x off_topic_multiplier for a lead of MISMATCH_LEAD or more. So the persona that fits
the task wins whatever the base prices, unless the match is a near tie, where the cheaper one does.
"""

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from apps.memory.embeddings import Embedder, get_embedder
from apps.swarm.models import Agent

TOP_PIECES = 2
# The lead at which an agent bids off_topic_multiplier x its base (smaller leads are priced in between). Below the
# gap between the best persona and the runner-up on 9 in 10 tasks of the evaluation set (bench/personas.py: p10
# 0.037, median 0.144), and 3x outweighs the personas' spread of base prices with their jitter (130 + 15 against
# 3 x (70 - 8)), so jitter never flips a clear match.
MISMATCH_LEAD = 0.03
PROFILE_CACHE_SIZE = 256


@dataclass(frozen=True)
class Match:
    """How well one agent matches one task, among the agents it competes with."""

    similarity: float
    best: float  # the best similarity of any agent compared
    rank: int  # 1 for the best match; agents with equal similarity share a rank

    @property
    def lead(self) -> float:
        return max(0.0, self.best - self.similarity)


def profile_pieces(agent: Agent) -> list[str]:
    pieces = [agent.description.strip()]
    if agent.capabilities:
        pieces.append("Capabilities: " + ", ".join(str(c).replace("_", " ") for c in agent.capabilities) + ".")
    if agent.keywords:
        pieces.append("Topics: " + ", ".join(str(k) for k in agent.keywords) + ".")
    for line in agent.profile.splitlines():
        line = line.strip().lstrip("-*•").strip()
        # Headings such as "Typical tasks:" say nothing of their own and would match every task alike.
        if line and not line.endswith(":"):
            pieces.append(line)
    # An agent with nothing said about it still gets a profile: its name.
    return [piece for piece in pieces if piece] or [agent.name]


class _ProfileCache:
    """Piece vectors per (embedder, profile text), for the process: a profile edited in the admin is a new key, so
    it is embedded again the next time it bids; the oldest entries go first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def vectors(self, embedder: Embedder, profiles: Sequence[list[str]]) -> list[np.ndarray]:
        keys = [(embedder.name, "\n".join(pieces)) for pieces in profiles]
        # Held while embedding: the embedder encodes one batch at a time anyway.
        with self._lock:
            missing = {key: pieces for key, pieces in zip(keys, profiles, strict=True) if key not in self._vectors}
            if missing:
                # Every new profile in one batch: a fresh process embeds the whole swarm in one call.
                embedded = embedder.embed([piece for pieces in missing.values() for piece in pieces])
                start = 0
                for key, pieces in missing.items():
                    self._vectors[key] = embedded[start : start + len(pieces)]
                    start += len(pieces)
            found = []
            for key in keys:
                self._vectors.move_to_end(key)
                found.append(self._vectors[key])
            while len(self._vectors) > max(self.size, len(set(keys))):
                self._vectors.popitem(last=False)
        return found

    def clear(self) -> None:
        with self._lock:
            self._vectors.clear()


_profiles = _ProfileCache(PROFILE_CACHE_SIZE)


def forget_profiles() -> None:
    _profiles.clear()


def competitors(bidders: Iterable[Agent]) -> list[Agent]:
    """The agents a bid is priced against: `bidders` and every other online agent that bids on tasks, idle or busy.

    Offline agents do not count: the swarm that could take the task is the one the worker hosts now."""
    agents = {agent.pk: agent for agent in bidders}
    for agent in Agent.objects.filter(bids_on_tasks=True).exclude(status=Agent.Status.OFFLINE).exclude(pk__in=agents):
        agents[agent.pk] = agent
    return list(agents.values())


def task_matches(
    descriptions: Sequence[str], agents: Sequence[Agent], *, embedder: Embedder | None = None
) -> list[dict[int, Match]]:
    """For each description (embedded together, in one batch), each agent's Match, by agent id."""
    if not descriptions or not agents:
        return [{} for _ in descriptions]
    embedder = embedder or get_embedder()
    tasks = embedder.embed(list(descriptions))
    pieces = _profiles.vectors(embedder, [profile_pieces(agent) for agent in agents])
    scores = np.empty((len(descriptions), len(agents)), dtype=np.float64)
    for column, vectors in enumerate(pieces):
        similarities = np.sort(tasks @ vectors.T, axis=1)
        scores[:, column] = similarities[:, -TOP_PIECES:].mean(axis=1)
    # Rounded as shown, so that agents shown with equal matches also rank and price equally.
    scores = np.round(scores, 3)
    matches = []
    for row in scores:
        best = float(row.max())
        ranks = {value: rank for rank, value in enumerate(sorted(set(row.tolist()), reverse=True), start=1)}
        matches.append(
            {
                agent.pk: Match(similarity=float(value), best=best, rank=ranks[float(value)])
                for agent, value in zip(agents, row.tolist(), strict=True)
            }
        )
    return matches


def price_factor(match: Match, off_topic_multiplier: int) -> float:
    """1 for the best match, rising geometrically to off_topic_multiplier at a lead of MISMATCH_LEAD."""
    ceiling = max(1, off_topic_multiplier)
    return float(ceiling ** min(1.0, match.lead / MISMATCH_LEAD))


def bid_amount(*, base_sats: int, match: Match, off_topic_multiplier: int) -> int:
    """The bid before jitter."""
    return math.floor(base_sats * price_factor(match, off_topic_multiplier) + 0.5)
