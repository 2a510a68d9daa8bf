from django.apps import AppConfig


class SwarmConfig(AppConfig):
    name = "apps.swarm"
    verbose_name = "Swarm"
