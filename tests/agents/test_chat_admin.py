from django.urls import reverse

from apps.agents.models import ChatSession
from apps.agents.services import chat_send

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
