from typing import Any

# WebSocket routes of every app; the activity feed adds its consumer here.
websocket_urlpatterns: list[Any] = []
