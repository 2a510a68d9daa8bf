from django.urls import path

from apps.core.views import not_built
from apps.events import views

app_name = "events"

urlpatterns = [
    path("events", views.event_list, name="list"),
    path("live", not_built, {"page": "live"}, name="live"),
]
