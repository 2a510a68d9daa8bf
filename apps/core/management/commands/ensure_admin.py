from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from apps.core.services import admin_ensure


class Command(BaseCommand):
    help = (
        "Create a superuser with a random password if none exists. The password is printed once and kept "
        "in TIMMY_DATA_DIR/admin-password.txt (mode 0600)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args: Any, **options: Any) -> None:
        path = settings.DATA_DIR / "admin-password.txt"
        password = admin_ensure(password_file=path, username=options["username"])
        if password is None:
            self.stdout.write("An admin user exists; nothing to do.")
            return
        self.stdout.write(
            self.style.WARNING(
                f"Created admin user '{options['username']}' with password: {password}\n"
                f"(shown once; also saved to {path}, readable only by you)"
            )
        )
