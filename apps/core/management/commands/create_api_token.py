from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.services import api_token_create


class Command(BaseCommand):
    help = (
        "Create an API token for USERNAME and print only the token (for `Authorization: Bearer <token>`). "
        "Only its hash is stored: it cannot be shown again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label to recognise the token by in the admin.")

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        user = User.objects.filter(**{User.USERNAME_FIELD: options["username"]}).first()
        if user is None:
            raise CommandError(f"No user named {options['username']!r}.")
        if not user.is_active:
            raise CommandError(f"User {options['username']!r} is inactive.")
        _, raw = api_token_create(user=user, name=options["name"])
        self.stdout.write(raw)
