from django.contrib import admin
from django.urls import include, path

from timmy_site.api import api

admin.site.site_header = "Timmy Time operations"
admin.site.site_title = "Timmy Time"
admin.site.index_title = "Operations console"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/", api.urls),
    path("swarm/", include("apps.swarm.urls")),
    path("swarm/", include("apps.events.urls")),
    path("router/", include("apps.providers.urls")),
    path("", include("apps.agents.urls")),
    path("", include("apps.memory.urls")),
    path("", include("apps.ledger.urls")),
    path("", include("apps.upgrades.urls")),
    path("", include("apps.core.urls")),
]
