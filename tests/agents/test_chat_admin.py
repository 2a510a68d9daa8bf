import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from apps.agents.models import ChatSession
from apps.agents.services import chat_send
from tests.factories import StaffFactory
from tests.memory.conftest import grant_private_reading

CHANGELIST = reverse("admin:agents_chatsession_changelist")


def test_conversations_are_listed_with_their_owner_and_message_count(admin_client, staff_user, ollama):
    reply = chat_send(user=staff_user, message="Hello")
    chat_send(user=staff_user, message="Again", session_id=reply.session_id)
    html = admin_client.get(CHANGELIST).content.decode()
    assert reply.session_id in html
    assert "reviewer" in html
    assert '<td class="field-message_count">4</td>' in html


def test_a_conversation_is_read_only_in_the_admin_and_can_be_deleted(admin_client, staff_user, ollama):
    reply = chat_send(user=staff_user, message="<b>Hello</b>")
    change = reverse("admin:agents_chatsession_change", args=[reply.session_id])
    html = admin_client.get(change).content.decode()
    assert "&lt;b&gt;Hello&lt;/b&gt;" in html and "Echo: &lt;b&gt;Hello&lt;/b&gt;" in html
    assert 'name="_save"' not in html
    assert admin_client.get(reverse("admin:agents_chatsession_add")).status_code == 403
    delete = reverse("admin:agents_chatsession_delete", args=[reply.session_id])
    admin_client.post(delete, {"post": "yes"})
    assert not ChatSession.objects.exists()


def admin_reader(staff_user, *, private: bool) -> Client:
    """The staff user with the admin's permissions on conversations and, if `private`, the one to read other
    users' private memories and chats."""
    codenames = ["view_chatsession", "delete_chatsession", "view_chatmessage"]
    staff_user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="agents", codename__in=codenames)
    )
    if private:
        grant_private_reading(staff_user)
    client = Client()
    client.force_login(staff_user)
    return client


def test_staff_without_the_permission_read_and_delete_only_their_own_conversations(staff_user, ollama):
    mine = chat_send(user=staff_user, message="My own question")
    theirs = chat_send(user=StaffFactory(username="carol"), message="Carol's secret plan")
    client = admin_reader(staff_user, private=False)
    html = client.get(CHANGELIST).content.decode()
    assert mine.session_id in html and theirs.session_id not in html
    assert "carol" not in html  # not even in an owner filter
    change = client.get(reverse("admin:agents_chatsession_change", args=[theirs.session_id]))
    assert change.status_code == 302 and "secret plan" not in change.content.decode()
    client.post(reverse("admin:agents_chatsession_delete", args=[theirs.session_id]), {"post": "yes"})
    client.post(CHANGELIST, {"action": "delete_selected", "_selected_action": [theirs.session_id], "post": "yes"})
    assert ChatSession.objects.filter(pk=theirs.session_id).exists()


@pytest.mark.parametrize("persona", ["granted staff", "superuser"])
def test_users_who_may_read_private_memories_read_everyones_conversations(staff_user, admin_client, ollama, persona):
    theirs = chat_send(user=StaffFactory(username="carol"), message="Carol's secret plan")
    client = admin_reader(staff_user, private=True) if persona == "granted staff" else admin_client
    html = client.get(CHANGELIST).content.decode()
    assert theirs.session_id in html and "carol" in html
    change = client.get(reverse("admin:agents_chatsession_change", args=[theirs.session_id]))
    assert change.status_code == 200 and "Carol&#x27;s secret plan" in change.content.decode()
