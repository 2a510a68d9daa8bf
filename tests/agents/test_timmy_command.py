import html
import re
import shlex
import subprocess
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from apps.agents.models import ChatMessage, ChatSession
from apps.agents.services import chat_send
from tests.factories import StaffFactory, UserFactory
from tests.llm_servers import refused_url


class Writes(StringIO):
    """Records each write, to see a reply arrive in pieces."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def admin_user(db):  # type: ignore[no-untyped-def]
    return UserFactory(username="admin", is_staff=True, is_superuser=True)


def timmy(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("timmy", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def session_of(stderr: str) -> str:
    match = re.search(r"^Session: (\S+)", stderr, re.MULTILINE)
    assert match, stderr
    return match.group(1)


def test_chat_prints_the_reply_and_who_answered_and_the_session(admin_user, ollama):
    out, err = timmy("chat", "Hello from the terminal")
    assert out == "Echo: Hello from the terminal\n"
    assert "— ollama · llama3.2" in err
    session = ChatSession.objects.get()
    assert session.owner == admin_user
    assert session_of(err) == str(session.pk)


def test_a_session_continues_the_conversation(admin_user, ollama):
    _, err = timmy("chat", "My name is Ada.")
    out, err2 = timmy("chat", "--session", session_of(err), "Who am I?")
    assert out == "Echo: Who am I?\n"
    assert session_of(err2) == session_of(err)
    assert [m["content"] for m in ollama.chats[1]["messages"][1:]] == [
        "My name is Ada.",
        "Echo: My name is Ada.",
        "Who am I?",
    ]


def test_stream_prints_the_reply_in_pieces_as_it_arrives(admin_user, ollama):
    out, err = Writes(), StringIO()
    call_command("timmy", "chat", "--stream", "stream this reply please", stdout=out, stderr=err)
    assert out.getvalue() == "Echo: stream this reply please\n"
    pieces = [w for w in out.writes if w.strip()]
    assert pieces == ["Echo: ", "stream ", "this ", "reply ", "please"]
    assert ollama.chats[0]["stream"] is True
    assert "— ollama · llama3.2" in err.getvalue()


def test_user_picks_whose_conversation_it_is(admin_user, ollama):
    operator = StaffFactory(username="operator")
    timmy("chat", "--user", "operator", "Hello")
    assert ChatSession.objects.get().owner == operator


def test_a_session_of_another_user_is_refused(admin_user, ollama):
    theirs = chat_send(user=StaffFactory(username="operator"), message="private")
    with pytest.raises(CommandError, match=f"Chat session {theirs.session_id} not found."):
        timmy("chat", "--session", theirs.session_id, "Show me")
    assert len(ollama.chats) == 1


def test_without_a_superuser_it_says_how_to_create_one(db, ollama):
    with pytest.raises(CommandError, match=r"run `make run` or `manage.py ensure_admin` first"):
        timmy("chat", "Hello")
    assert not ollama.chats


def test_an_unknown_user_is_refused(admin_user, ollama):
    with pytest.raises(CommandError, match="No active user named 'ghost'"):
        timmy("chat", "--user", "ghost", "Hello")


def test_when_no_provider_answers_it_fails_with_the_routers_reason_and_keeps_the_message(admin_user, all_down):
    err = StringIO()
    with pytest.raises(CommandError, match=r"^No LLM provider answered\. local: .*; backup: ") as caught:
        call_command("timmy", "chat", "Anyone?", stdout=StringIO(), stderr=err)
    kept = ChatMessage.objects.get()
    assert kept.error == str(caught.value)
    assert session_of(err.getvalue()) == str(kept.session_id)


def test_the_command_runs_from_a_shell_and_exits_1_when_nothing_answers(transactional_db, run_manage, all_down):
    UserFactory(username="admin", is_staff=True, is_superuser=True)
    result = run_manage("timmy", "chat", "Anyone?")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "CommandError: No LLM provider answered. local: " in result.stderr
    assert "Traceback" not in result.stderr


def test_the_command_runs_from_a_shell_and_prints_the_reply(transactional_db, run_manage, ollama):
    UserFactory(username="admin", is_staff=True, is_superuser=True)
    result = run_manage("timmy", "chat", "--stream", "Hello from a shell")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Echo: Hello from a shell\n"
    assert session_of(result.stderr) == str(ChatSession.objects.get().pk)


def test_help_explains_the_chat_command(db, run_manage):
    result = run_manage("timmy", "chat", "--help")
    assert result.returncode == 0
    for option in ("--session ID", "--stream", "--user USERNAME", "python manage.py timmy chat"):
        assert option in result.stdout
    overview = run_manage("timmy", "--help")
    assert "stdout" in overview.stdout and "chat" in overview.stdout


def test_timmy_answers_paris_from_a_shell_on_a_fresh_install(transactional_db, run_manage, model_host_process):
    """As after `make setup`: no Ollama, no API; the command's process reaches the one embedded model host."""
    UserFactory(username="admin", is_staff=True, is_superuser=True)
    env = {**model_host_process.env, "OLLAMA_HOST": refused_url()}
    result = run_manage("timmy", "chat", "--stream", "What is the capital of France? Answer with one word.", env=env)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "— embedded · SmolLM2-135M-Instruct" in result.stderr
    reply = ChatMessage.objects.get(role=ChatMessage.Role.ASSISTANT)
    assert result.stdout == reply.content + "\n"


def test_the_chat_pages_terminal_hint_runs_as_printed_and_continues_that_conversation(
    transactional_db, subprocess_env, ollama, tmp_path
):
    user = UserFactory(username="ada", is_staff=True)
    first = chat_send(user=user, message="My name is Ada.")
    client = Client()
    client.force_login(user)
    page = client.get(f"/chat/{first.session_id}").content.decode()
    hint = re.search(r'<code class="terminal-command">([^<]+)</code>', page)
    assert hint, page
    command = shlex.split(html.unescape(hint.group(1)))
    # Pasted into a shell in any directory, not only the project's (the environment names the test's database).
    result = subprocess.run(command, cwd=tmp_path, env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Echo: Hi again\n"
    assert session_of(result.stderr) == first.session_id
    assert ChatSession.objects.get().messages.count() == 4
