"""The memory page (/memory) with the real embedding model and search index: what each user sees, and the facts
added and forgotten there."""

import re

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from apps.events.models import Event
from apps.memory import services
from apps.memory.models import MemoryEntry
from tests.factories import AgentFactory, StaffFactory, TaskFactory

PAGE = reverse("memory:index")
ADD = reverse("memory:fact_add")
HTMX = {"HX-Request": "true"}
SECRET = "Alice's locker code is 4321."


def forget_url(memory: MemoryEntry) -> str:
    return reverse("memory:forget", args=[memory.pk])


def remember(content: str, owner=None, context_type: str = "fact", **fields) -> MemoryEntry:
    return services.store_memory(
        content=content, context_type=context_type, source="test", owner=owner, **fields
    ).memory


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice(db):
    return StaffFactory(username="alice")


@pytest.fixture
def bob(db):
    return StaffFactory(username="bob")


@pytest.fixture
def bob_client(bob) -> Client:
    return client_for(bob)


@pytest.fixture
def alices_secret(alice) -> MemoryEntry:
    """Alice's private fact, with an agent, and a shared fact that matches a search for it less well."""
    agent = AgentFactory(name="scribe")
    secret = remember(SECRET, owner=alice, agent_id=agent.pk)
    remember("Lockers in the hall are emptied every Friday.")
    return secret


def test_another_users_private_memory_is_in_no_count_and_no_list_of_the_page(bob_client, bob, alice, alices_secret):
    remember("Alice chatted about lockers.", owner=alice, context_type="conversation")
    remember("Bob prefers tea to coffee.", owner=bob)
    response = bob_client.get(PAGE)
    assert response.status_code == 200
    page = response.content.decode()
    assert "4321" not in page and "Alice chatted" not in page
    assert "Bob prefers tea to coffee." in page and "Lockers in the hall" in page
    assert response.context["counts_by_type"] == {"conversation": 0, "fact": 2, "document": 0}
    assert response.context["total"] == 2
    # The shared fact and Bob's have no agent: Alice's scribe memory is not counted, not even as a row.
    assert [(c.name, c.count) for c in response.context["counts_by_agent"]] == [("no agent", 2)]
    assert 'title="Events of scribe"' not in page
    assert [f.content for f in response.context["facts"]] == [
        "Bob prefers tea to coffee.",
        "Lockers in the hall are emptied every Friday.",
    ]

    as_alice = client_for(alice).get(PAGE)
    assert as_alice.context["counts_by_type"] == {"conversation": 1, "fact": 2, "document": 0}
    assert ("scribe", 1) in [(c.name, c.count) for c in as_alice.context["counts_by_agent"]]
    assert SECRET.replace("'", "&#x27;") in as_alice.content.decode()


def test_search_never_shows_another_users_private_memory_even_as_the_best_match(bob_client, alices_secret):
    for headers in ({}, HTMX):
        response = bob_client.get(PAGE, {"q": "Alice's locker code"}, headers=headers)
        assert response.status_code == 200
        page = response.content.decode()
        assert "4321" not in page
        assert [hit.memory.content for hit in response.context["hits"]] == [
            "Lockers in the hall are emptied every Friday."
        ]
    # Alice's own search finds it first.
    hits = client_for(alices_secret.owner).get(PAGE, {"q": "Alice's locker code"}).context["hits"]
    assert hits[0].memory == alices_secret


def test_search_results_show_the_score_similarity_source_owner_and_links(bob_client, bob):
    agent = AgentFactory(name="echo-1")
    task = TaskFactory(description="Research lockers")
    remember("Lockers are made of steel.", agent_id=agent.pk, task_id=task.pk)
    remember("Bob's locker is number 12.", owner=bob)
    response = bob_client.get(PAGE, {"q": "locker"}, headers=HTMX)
    assert response.status_code == 200
    page = response.content.decode()
    assert "<html" not in page and 'id="memory-results"' in page  # the results partial alone
    assert len(re.findall(r"score \d\.\d{3}<", page)) == 2
    assert len(re.findall(r"similarity \d\.\d{3}<", page)) == 2
    assert "from <code>test</code>" in page
    assert '<span class="memory-owner">shared</span>' in page and '<span class="memory-owner">you</span>' in page
    assert f'href="{reverse("swarm:task", args=[task.pk])}"' in page
    assert f'href="{reverse("events:list")}?task_id={task.pk}"' in page
    assert f'href="{reverse("events:list")}?agent_id={agent.pk}"' in page


def test_search_filters_by_type_and_agent(bob_client):
    agent = AgentFactory(name="echo-1")
    remember("Lockers are made of steel.", agent_id=agent.pk)
    remember("Lockers are painted green.", context_type="document")
    by_agent = bob_client.get(PAGE, {"q": "lockers", "agent": agent.pk}).context["hits"]
    assert [h.memory.content for h in by_agent] == ["Lockers are made of steel."]
    by_type = bob_client.get(PAGE, {"q": "lockers", "context_type": "document"}).context["hits"]
    assert [h.memory.content for h in by_type] == ["Lockers are painted green."]


def test_staff_without_the_permission_have_no_everyone_box_and_their_everyone_search_stays_theirs_with_the_reason(
    bob_client, alices_secret
):
    page = bob_client.get(PAGE).content.decode()
    assert 'name="everyone"' not in page
    assert "needs the permission “Can read other users' private memories”" in page
    for headers in ({}, HTMX):
        response = bob_client.get(PAGE, {"q": "Alice's locker code", "everyone": "on"}, headers=headers)
        assert response.status_code == 200
        assert [hit.memory.content for hit in response.context["hits"]] == [
            "Lockers in the hall are emptied every Friday."
        ]
        page = response.content.decode()
        assert "4321" not in page and "in everyone's memories" not in page
        assert "Searched your own and the shared memories only." in page
        assert "an admin grants it on your user page in the admin" in page


@pytest.mark.parametrize("persona", ["granted staff", "superuser"])
def test_users_who_may_read_private_memories_see_everyones_in_search_only_when_they_tick_the_box(
    persona, private_reader, admin_user, alices_secret
):
    reader = client_for(private_reader if persona == "granted staff" else admin_user)
    page = reader.get(PAGE).content.decode()
    assert 'name="everyone"' in page and 'name="everyone" checked' not in page
    assert "Searched your own" not in page
    own_scope = reader.get(PAGE, {"q": "Alice's locker code"}).context["hits"]
    assert alices_secret not in [hit.memory for hit in own_scope]
    response = reader.get(PAGE, {"q": "Alice's locker code", "everyone": "on"}, headers=HTMX)
    assert response.context["hits"][0].memory == alices_secret
    page = response.content.decode()
    assert ", in everyone's memories" in page and "Searched your own" not in page
    assert '<span class="memory-owner">alice</span>' in page
    # The counts and the lists stay the user's own.
    assert reader.get(PAGE, {"q": "x", "everyone": "on"}).context["total"] == 1


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"q": "   "}, "Type what to look for"),
        ({"q": "lockers", "context_type": "rumour"}, "Select a valid choice"),
        ({"q": "lockers", "agent": "999999"}, "Select a valid choice"),
    ],
)
def test_a_bad_search_is_refused_with_400_and_the_reason(staff_client, params, reason):
    for headers in ({}, HTMX):
        response = staff_client.get(PAGE, params, headers=headers)
        assert response.status_code == 400
        assert reason in response.content.decode()


def test_adding_a_fact_stores_it_for_the_user_or_shared_and_redirects(staff_client, staff_user):
    response = staff_client.post(ADD, {"content": "  The node's alias is Timmy.  "})
    memory = MemoryEntry.objects.get()
    assert response.status_code == 302
    assert response.url == f"{PAGE}#memory-{memory.pk}"
    assert (memory.content, memory.context_type, memory.source, memory.owner) == (
        "The node's alias is Timmy.",
        "fact",
        "page",
        staff_user,
    )
    page = staff_client.get(PAGE).content.decode()
    assert f"Remembered fact {memory.pk} (only you see it)." in page

    staff_client.post(ADD, {"content": "The node runs on a Raspberry Pi.", "shared": "on"})
    shared = MemoryEntry.objects.get(content="The node runs on a Raspberry Pi.")
    assert shared.owner is None
    assert Event.objects.filter(event_type="memory.stored").count() == 2


def test_a_fact_added_as_public_is_shared_and_shown_as_public(staff_client):
    response = staff_client.post(ADD, {"content": "Timmy's node alias is Sparky.", "public": "on"}, follow=True)
    memory = MemoryEntry.objects.get()
    assert (memory.owner, memory.public) == (None, True)
    page = response.content.decode()
    assert f"Remembered fact {memory.pk} (everyone sees it; public: the paid chat may use it)." in page
    assert '<span class="badge memory-public"' in page
    [event] = Event.objects.filter(event_type="memory.stored")
    assert (event.data["shared"], event.data["public"]) == (True, True)
    assert [h.memory for h in services.search_memories("node alias", user=AnonymousUser(), public_only=True)] == [
        memory
    ]


def test_adding_as_public_a_fact_already_known_as_shared_makes_it_public(staff_client, staff_user):
    known = remember("The garage door code is 9876.")
    response = staff_client.post(ADD, {"content": "The garage door code is 9876.", "public": "on"}, follow=True)
    assert f"as fact {known.pk}, so not stored again" in response.content.decode()
    assert "It is public now: the paid chat may use it." in response.content.decode()
    known.refresh_from_db()
    assert known.public and MemoryEntry.objects.count() == 1
    [event] = Event.objects.filter(event_type="memory.published")
    assert (event.source, event.data) == ("page", {"memory_id": known.pk, "public": True})


def test_adding_a_fact_with_htmx_returns_the_facts_and_the_counts_out_of_band(staff_client):
    response = staff_client.post(ADD, {"content": "The node's alias is Timmy."}, headers=HTMX)
    assert response.status_code == 200
    page = response.content.decode()
    memory = MemoryEntry.objects.get()
    assert "<html" not in page
    assert f'id="memory-{memory.pk}"' in page and "The node&#x27;s alias is Timmy." in page
    assert f"Remembered fact {memory.pk}" in page  # the message, in the swapped part
    assert 'id="memory-counts" hx-swap-oob="true"' in page
    assert 'id="memory-recent" hx-swap-oob="true"' in page


def test_a_duplicate_fact_says_it_is_already_known_and_shows_it(staff_client):
    staff_client.post(ADD, {"content": "The node's alias is Timmy."})
    known = MemoryEntry.objects.get()
    response = staff_client.post(ADD, {"content": "the node's ALIAS is Timmy."}, headers=HTMX)
    assert response.status_code == 200
    page = response.content.decode()
    assert f"Already known, with the same words, as fact {known.pk}" in page
    assert "The node&#x27;s alias is Timmy." in page
    assert f'class="memory is-known" id="memory-{known.pk}"' in page
    assert MemoryEntry.objects.count() == 1

    plain = staff_client.post(ADD, {"content": "The node's alias is Timmy!"}, follow=True)
    assert f"Already known, with nearly the same meaning, as fact {known.pk}" in plain.content.decode()
    assert plain.redirect_chain == [(f"{PAGE}#memory-{known.pk}", 302)]
    assert MemoryEntry.objects.count() == 1


@pytest.mark.parametrize("content", ["", "   \n  "])
def test_an_empty_fact_is_refused_with_the_reason_and_nothing_is_stored(staff_client, content):
    plain = staff_client.post(ADD, {"content": content})
    assert plain.status_code == 400
    assert "Write the fact to remember." in plain.content.decode()
    htmx = staff_client.post(ADD, {"content": content}, headers=HTMX)
    assert htmx.status_code == 422
    assert "Write the fact to remember." in htmx.content.decode() and "<html" not in htmx.content.decode()
    assert not MemoryEntry.objects.exists()


def test_forgetting_a_fact_keeps_it_with_the_reason_and_takes_it_off_the_page(staff_client, staff_user):
    first = remember("The node's alias is Timmy.", owner=staff_user)
    second = remember("The garage door code is 9876.")  # shared: staff may forget it
    response = staff_client.post(forget_url(first), {"reason": "renamed the node"})
    assert response.status_code == 302
    page = staff_client.get(PAGE)
    assert f"Forgot memory {first.pk}" in page.content.decode() and "Reason: renamed the node" in page.content.decode()
    assert first not in page.context["facts"]
    first.refresh_from_db()
    assert first.is_deleted and first.deleted_reason == "renamed the node"

    htmx = staff_client.post(forget_url(second), {"reason": "changed it"}, headers=HTMX)
    assert htmx.status_code == 200
    assert f"Forgot memory {second.pk}" in htmx.content.decode()
    assert f'id="memory-{second.pk}"' not in htmx.content.decode()
    assert htmx.context["counts_by_type"]["fact"] == 0
    assert services.search_memories("garage door code", user=staff_user) == []
    again = staff_client.post(forget_url(second), {"reason": "twice"}, follow=True)
    assert f"Memory {second.pk} was already forgotten." in again.content.decode()
    second.refresh_from_db()
    assert second.deleted_reason == "changed it"


@pytest.mark.parametrize("reason", ["", "   "])
def test_forgetting_without_a_reason_is_refused_and_forgets_nothing(staff_client, staff_user, reason):
    memory = remember("The node's alias is Timmy.", owner=staff_user)
    plain = staff_client.post(forget_url(memory), {"reason": reason})
    assert plain.status_code == 400
    assert "Say why this memory should be forgotten." in plain.content.decode()
    htmx = staff_client.post(forget_url(memory), {"reason": reason}, headers=HTMX)
    assert htmx.status_code == 422
    page = htmx.content.decode()
    assert f'id="reason-error-{memory.pk}"' in page and "Say why this memory should be forgotten." in page
    memory.refresh_from_db()
    assert not memory.is_deleted


@pytest.mark.parametrize("reason", ["not yours", ""])
def test_nobody_can_forget_another_users_private_memory(bob_client, alices_secret, reason):
    for headers in ({}, HTMX):
        assert bob_client.post(forget_url(alices_secret), {"reason": reason}, headers=headers).status_code == 404
    assert bob_client.post(reverse("memory:forget", args=[999999]), {"reason": "gone"}).status_code == 404
    alices_secret.refresh_from_db()
    assert not alices_secret.is_deleted


def test_memory_content_is_escaped_everywhere(staff_client, staff_user):
    remember("<script>alert('memory')</script> & <b>bold</b>", owner=staff_user)
    for response in (staff_client.get(PAGE), staff_client.get(PAGE, {"q": "alert memory bold"}, headers=HTMX)):
        page = response.content.decode()
        assert "<script>alert" not in page and "<b>bold" not in page
        assert "&lt;script&gt;alert(&#x27;memory&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page


def test_the_empty_page_explains_what_memory_is_and_how_it_fills(staff_client):
    page = staff_client.get(PAGE).content.decode()
    assert "Memory fills by itself" in page
    assert "chat with Timmy" in page and "Echo" in page and "POST /api/v1/memory" in page
    assert "No facts yet." in page and "Nothing remembered yet." in page


def test_anonymous_visitors_go_to_login_and_nothing_is_stored(client, db):
    for response in (client.get(PAGE), client.post(ADD, {"content": "x"})):
        assert response.status_code == 302 and response.url.startswith(reverse("login"))
    assert not MemoryEntry.objects.exists()


def test_non_staff_users_are_refused(plain_client, plain_user):
    memory = remember("Plain's own fact.", owner=plain_user)
    assert plain_client.get(PAGE).status_code == 403
    assert plain_client.post(ADD, {"content": "x"}).status_code == 403
    assert plain_client.post(forget_url(memory), {"reason": "mine"}).status_code == 403
    memory.refresh_from_db()
    assert not memory.is_deleted and MemoryEntry.objects.count() == 1


def test_the_page_and_the_search_need_the_same_number_of_queries_for_few_or_many_memories(staff_client, staff_user):
    agents = [AgentFactory(name=f"agent-{n}") for n in range(3)]

    def queries(**params: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert staff_client.get(PAGE, params).status_code == 200
        return len(captured)

    def seed(n: int) -> None:
        items = [
            services.NewMemory(
                f"Note {n}-{i} about lockers.",
                ("fact", "conversation")[i % 2],
                "test",
                owner=staff_user if i % 3 else None,
                agent_id=agents[i % 3].pk,
                task_id=TaskFactory().pk,
            )
            for i in range(n)
        ]
        services.store_memories(items, keep_both=True)

    seed(3)
    few_page, few_search = queries(), queries(q="lockers")
    seed(30)
    # The vector search is two statements on SQLite (codes, then vectors); on PostgreSQL it sets its HNSW search
    # width, and searches again exactly when the filtered index scan comes back short (as it does with fewer
    # memories than the search depth).
    # + the navigation's pending upgrades, + the user's and their groups' permissions (may they read everyone's?)
    search_bound = (18 if connection.vendor == "postgresql" else 16) + 1 + 2
    assert queries() == few_page <= 9 + 2
    assert queries(q="lockers") == few_search <= search_bound
