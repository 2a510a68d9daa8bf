from typing import Any

from django.core.management.base import BaseCommand

from apps.providers.services import providers_ensure_defaults


class Command(BaseCommand):
    help = (
        "Create the default providers (ollama, airllm, openai) from the settings if they do not exist yet. "
        "Existing providers are never changed: edit them in the admin."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        created = providers_ensure_defaults()
        for provider in created:
            state = "enabled" if provider.enabled else "disabled"
            self.stdout.write(f"Created provider {provider.name} ({state}, priority {provider.priority}).")
        if not created:
            self.stdout.write("All default providers exist; nothing created.")
