from django.urls import path

from apps.events.consumers import EventFeedConsumer
from apps.events.feed import EventHub

# One follower of the event table per web process, shared by all of its WebSocket clients.
event_hub = EventHub()

websocket_urlpatterns = [
    path("ws/events/", EventFeedConsumer.as_asgi(hub=event_hub)),
]
