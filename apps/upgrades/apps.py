from django.apps import AppConfig


class UpgradesConfig(AppConfig):
    name = "apps.upgrades"
    verbose_name = "Self-upgrades"
