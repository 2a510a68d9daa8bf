import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.agents import selectors, services


class Command(BaseCommand):
    help = (
        'Talk to Timmy from a terminal. `timmy chat "message"` prints his reply on stdout; which provider and '
        "model answered, and the conversation's id, go to stderr. Pass that id with --session to continue the "
        "conversation. When no LLM provider answers, it says why and exits with status 1."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        chat = commands.add_parser(
            "chat",
            help="Send one message to Timmy and print the reply.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            description="Send one message to Timmy and print the reply.",
            epilog='Example:\n  python manage.py timmy chat "What can you do?"\n'
            '  python manage.py timmy chat --session ID "And then?"',
        )
        chat.add_argument("message", help="What to say (quote it).")
        chat.add_argument("--session", metavar="ID", help="Continue this conversation (its id is printed each time).")
        chat.add_argument("--stream", action="store_true", help="Print the reply as it arrives.")
        chat.add_argument(
            "--user",
            metavar="USERNAME",
            help="Whose conversation this is (default: the first superuser, as `manage.py ensure_admin` creates).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = selectors.user_for_cli(options["user"])
        if user is None:
            if options["user"]:
                raise CommandError(f"No active user named {options['user']!r}.")
            raise CommandError(
                "No superuser to chat as: run `make run` or `manage.py ensure_admin` first, or pass --user USERNAME."
            )
        printed: list[str] = []
        on_chunk = None
        if options["stream"]:

            def on_chunk(text: str) -> None:
                printed.append(text)
                self.stdout.write(text, ending="")
                self.stdout.flush()

        try:
            reply = services.chat_send(
                user=user, message=options["message"], session_id=options["session"], on_chunk=on_chunk
            )
        except (services.InvalidChatMessage, services.ChatSessionNotFound) as exc:
            raise CommandError(str(exc)) from exc
        except services.ChatUnavailable as exc:
            if printed:
                self.stdout.write("")  # end the line of a reply that broke off
            self.stderr.write(f"Session: {exc.session_id} (your message is kept)")
            raise CommandError(exc.reason) from exc
        self.stdout.write("" if options["stream"] else reply.response)
        self.stderr.write(f"— {reply.provider} · {reply.model}")
        self.stderr.write(f"Session: {reply.session_id}")
