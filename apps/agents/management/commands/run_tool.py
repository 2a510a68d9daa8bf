import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.agents.services import ToolNotFound, tool_run
from apps.agents.tools import TOOLS


class Command(BaseCommand):
    help = (
        "Run one of the agents' tools as an agent would (logged as tool.called / tool.completed) and print its "
        "result as JSON. Without a name, list the tools."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", nargs="?", help="The tool to run.")
        parser.add_argument("arguments", nargs="*", metavar="KEY=VALUE", help="Keyword arguments for the tool.")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["name"]:
            for tool in TOOLS.values():
                self.stdout.write(f"{tool.name}: {tool.description}")
            return
        arguments: dict[str, str] = {}
        for pair in options["arguments"]:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise CommandError(f"Arguments are KEY=VALUE, got {pair!r}.")
            arguments[key] = value
        try:
            result = tool_run(name=options["name"], arguments=arguments, source="cli")
        except ToolNotFound as exc:
            raise CommandError(str(exc)) from exc
        if not result.ok:
            raise CommandError(f"The tool failed: {result.error}")
        self.stdout.write(json.dumps(result.value, indent=2, sort_keys=True))
