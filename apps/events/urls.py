from django.urls import path

from apps.events import views

app_name = "events"

urlpatterns = [
    path("events", views.event_list, name="list"),
    path("live", views.live, name="live"),
]
