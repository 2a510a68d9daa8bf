import logging

from django.apps import AppConfig
from django.conf import settings


class CoreConfig(AppConfig):
    name = "apps.core"
    verbose_name = "Operations"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_login_failed
        from django.core.signals import got_request_exception

        from apps.core import auth, checks, database  # noqa: F401  (checks registers the system checks)

        user_login_failed.connect(auth.login_failed, dispatch_uid="core.login_failed")
        user_logged_in.connect(auth.logged_in, dispatch_uid="core.logged_in")
        got_request_exception.connect(database.note_request_exception, dispatch_uid="core.database_unavailable")
        for change in settings.DATA_DIR_TIGHTENED:
            logging.getLogger("timmy.data_dir").warning("Took group and other permissions off %s", change)
