"""The memory admin: lists, filters and search, read-only content, and forgetting as a confirm-first action."""

import pytest
from django.contrib.auth.models import AnonymousUser, Permission
from django.test import Client
from django.urls import reverse

from apps.events.models import Event
from apps.memory import services
from apps.memory.models import MemoryEntry
from tests.factories import AgentFactory, StaffFactory
from tests.memory.conftest import grant_private_reading

CHANGELIST = reverse("admin:memory_memoryentry_changelist")


def remember(content: str, owner=None, context_type: str = "fact", **fields) -> MemoryEntry:
    return services.store_memory(
        content=content, context_type=context_type, source="test", owner=owner, **fields
    ).memory


def forget_selected(client: Client, memories: list[MemoryEntry], **extra: str):
    return client.post(
        CHANGELIST, {"action": "forget_memories", "_selected_action": [m.pk for m in memories], **extra}, follow=True
    )


@pytest.fixture
def memories(admin_user) -> dict[str, MemoryEntry]:
    agent = AgentFactory(name="scribe")
    return {
        "mine": remember("The admin's own note about backups.", owner=admin_user),
        "shared": remember("Backups run every night.", agent_id=agent.pk),
        "theirs": remember("Carol's private note on backups.", owner=StaffFactory(username="carol")),
        "chat": remember("carol: hello\nTimmy: hi", owner=None, context_type="conversation"),
    }


def listed_memories(response) -> list[MemoryEntry]:
    return list(response.context["cl"].result_list)


def listed(response) -> set[str]:
    return {m.content for m in listed_memories(response)}


def test_the_list_shows_a_preview_the_owner_or_shared_and_counts_no_total(admin_client, memories):
    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    page = response.content.decode()
    assert "Carol&#x27;s private note on backups." in page and ">carol<" in page and ">shared<" in page
    assert ">scribe<" in page
    assert response.context["cl"].show_full_result_count is False


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"q": "nightly backups"}, set()),
        ({"q": "backups"}, {"mine", "shared", "theirs"}),
        ({"context_type": "conversation"}, {"chat"}),
        ({"visibility": "shared"}, {"shared", "chat"}),
        ({"visibility": "private"}, {"mine", "theirs"}),
        ({"forgotten": "no"}, {"shared", "theirs", "chat"}),
        ({"forgotten": "yes"}, {"mine"}),
    ],
)
def test_the_list_filters_and_searches(admin_client, admin_user, memories, params, expected):
    services.forget(memory_id=memories["mine"].pk, actor=admin_user, reason="old")
    response = admin_client.get(CHANGELIST, params)
    assert response.status_code == 200
    assert listed(response) == {memories[name].content for name in expected}


def test_the_list_filters_by_embedding_model_and_agent(admin_client, memories):
    model = memories["shared"].embedding_model
    assert len(listed(admin_client.get(CHANGELIST, {"embedding_model": model}))) == 4
    assert listed(admin_client.get(CHANGELIST, {"embedding_model": "other-model"})) == set()
    by_agent = admin_client.get(CHANGELIST, {"agent__id__exact": memories["shared"].agent_id})
    assert listed(by_agent) == {"Backups run every night."}


def test_forgetting_asks_for_a_reason_first_and_changes_nothing_until_then(admin_client, admin_user, memories):
    services.forget(memory_id=memories["chat"].pk, actor=admin_user, reason="old")
    response = forget_selected(admin_client, list(memories.values()))
    page = response.content.decode()
    assert response.status_code == 200
    assert "These 2 memories will be forgotten" in page
    assert "The admin&#x27;s own note about backups." in page and "Backups run every night." in page
    assert "1 selected memory was already forgotten" in page
    assert "1 selected memory is another user's private memory" in page
    assert 'name="reason"' in page
    assert MemoryEntry.objects.filter(deleted_at__isnull=False).count() == 1

    no_reason = forget_selected(admin_client, list(memories.values()), confirm="yes", reason="  ")
    assert "Say why these memories should be forgotten" in no_reason.content.decode()
    assert MemoryEntry.objects.filter(deleted_at__isnull=False).count() == 1


def test_forgetting_selected_memories_forgets_them_with_the_reason_and_reports_the_counts(
    admin_client, admin_user, memories
):
    services.forget(memory_id=memories["chat"].pk, actor=admin_user, reason="old")
    response = forget_selected(admin_client, list(memories.values()), confirm="yes", reason="backups moved")
    page = response.content.decode()
    assert "Forgot 2 memory(ies)." in page
    assert "1 memory(ies) were already forgotten." in page
    assert "1 memory(ies) are other users&#x27; private memories and were left" in page
    for name in ("mine", "shared"):
        memory = MemoryEntry.objects.get(pk=memories[name].pk)
        assert memory.is_deleted and memory.deleted_reason == "backups moved"
        assert services.search_memories(memory.content, user=admin_user) == []
    assert not MemoryEntry.objects.get(pk=memories["theirs"].pk).is_deleted
    assert MemoryEntry.objects.get(pk=memories["chat"].pk).deleted_reason == "old"
    reasons = Event.objects.filter(event_type="memory.forgotten").values_list("data__reason", flat=True)
    assert sorted(reasons) == ["backups moved", "backups moved", "old"]


def test_the_forget_action_needs_the_change_permission(db, memories):
    viewer = StaffFactory(username="viewer")
    viewer.user_permissions.add(Permission.objects.get(codename="view_memoryentry"))
    client = Client()
    client.force_login(viewer)
    page = client.get(CHANGELIST)
    assert page.status_code == 200
    assert "forget_memories" not in page.content.decode()
    forget_selected(client, list(memories.values()), confirm="yes", reason="no right")
    assert not MemoryEntry.objects.filter(deleted_at__isnull=False).exists()


def test_content_and_scope_cannot_be_edited_and_memories_cannot_be_added_or_deleted(admin_client, memories):
    memory = memories["shared"]
    change = reverse("admin:memory_memoryentry_change", args=[memory.pk])
    page = admin_client.get(change)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Backups run every night." in html
    for field in ("content", "context_type", "owner", "agent", "content_hash", "access_count", "deleted_reason"):
        assert f'name="{field}"' not in html
    admin_client.post(
        change,
        {"content": "Edited.", "context_type": "document", "source": "test", "session_id": "", "metadata": "{}"},
    )
    memory.refresh_from_db()
    assert (memory.content, memory.context_type) == ("Backups run every night.", "fact")
    assert admin_client.get(reverse("admin:memory_memoryentry_add")).status_code == 403
    assert admin_client.get(reverse("admin:memory_memoryentry_delete", args=[memory.pk])).status_code == 403
    assert "delete_selected" not in admin_client.get(CHANGELIST).content.decode()


def staff_client_with(*codenames: str, reader: bool = False) -> Client:
    user = StaffFactory(username="ops")
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="memory", codename__in=codenames))
    if reader:
        user = grant_private_reading(user)
    client = Client()
    client.force_login(user)
    return client


def test_staff_without_the_permission_see_only_their_own_and_the_shared_memories(db, memories):
    client = staff_client_with("view_memoryentry", "change_memoryentry")
    response = client.get(CHANGELIST)
    assert listed(response) == {memories["shared"].content, memories["chat"].content}
    assert "Carol" not in response.content.decode() and "admin&#x27;s own note" not in response.content.decode()
    assert listed(client.get(CHANGELIST, {"q": "backups", "visibility": "private"})) == set()
    change = client.get(reverse("admin:memory_memoryentry_change", args=[memories["theirs"].pk]))
    assert change.status_code == 302 and "Carol" not in change.content.decode()
    # Even a hand-made POST cannot reach another user's memory through an action.
    page = forget_selected(client, [memories["theirs"]], confirm="yes", reason="not yours").content.decode()
    assert "Carol" not in page
    assert not MemoryEntry.objects.get(pk=memories["theirs"].pk).is_deleted


def test_staff_granted_the_permission_see_everyones_memories(db, memories):
    client = staff_client_with("view_memoryentry", reader=True)
    assert listed(client.get(CHANGELIST)) == {m.content for m in memories.values()}
    change = client.get(reverse("admin:memory_memoryentry_change", args=[memories["theirs"].pk]))
    assert change.status_code == 200 and "Carol&#x27;s private note on backups." in change.content.decode()


def mark(client: Client, action: str, memories: list[MemoryEntry], **extra: str):
    return client.post(
        CHANGELIST, {"action": action, "_selected_action": [m.pk for m in memories], **extra}, follow=True
    )


def stranger_finds(*questions: str) -> set[int]:
    """What the paid chat's searches for these questions find; one question each, as a search returns only the
    memories about what it asks (the chat is not about backups)."""
    return {
        hit.memory.pk
        for question in questions
        for hit in services.search_memories(question, user=AnonymousUser(), public_only=True)
    }


def test_marking_memories_public_asks_first_then_marks_the_live_shared_ones_and_logs_who(
    admin_client, admin_user, memories
):
    forgotten = remember("An old shared note.")
    services.forget(memory_id=forgotten.pk, actor=admin_user, reason="old")
    selected = [*memories.values(), forgotten]
    page = mark(admin_client, "make_public", selected).content.decode()
    assert "These 2 memories will be public" in page and "POST /api/v1/serve/chat" in page
    assert "2 selected memories are private memories and will be left" in page
    assert "1 selected memory is forgotten" in page
    assert not MemoryEntry.objects.filter(public=True).exists()

    done = mark(admin_client, "make_public", selected, confirm="yes").content.decode()
    assert "Marked 2 memory(ies) public: the paid chat may draw on them." in done
    assert "2 memory(ies) are private and were left" in done and "1 memory(ies) are forgotten" in done
    public = {memories["shared"].pk, memories["chat"].pk}
    assert set(MemoryEntry.objects.filter(public=True).values_list("pk", flat=True)) == public
    events = Event.objects.filter(event_type="memory.published")
    assert {(e.data["memory_id"], e.data["by"]) for e in events} == {(pk, "admin") for pk in public}
    assert {m.pk for m in listed_memories(admin_client.get(CHANGELIST, {"visibility": "public"}))} == public
    assert stranger_finds("backups", "hello Timmy") == public

    again = mark(admin_client, "make_public", [memories["shared"]]).content.decode()
    assert "None of the selected memories can be marked public" in again and "already public" in again
    mark(admin_client, "make_not_public", [memories["shared"]], confirm="yes")
    assert stranger_finds("backups", "hello Timmy") == {memories["chat"].pk}
    [undone] = Event.objects.filter(event_type="memory.unpublished")
    assert undone.data == {"memory_id": memories["shared"].pk, "public": False, "by": "admin"}


def test_the_public_actions_need_the_change_permission(db, memories):
    client = staff_client_with("view_memoryentry")
    page = client.get(CHANGELIST).content.decode()
    assert "make_public" not in page and "make_not_public" not in page
    mark(client, "make_public", [memories["shared"]], confirm="yes")
    assert not MemoryEntry.objects.filter(public=True).exists()
