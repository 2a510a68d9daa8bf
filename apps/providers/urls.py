from django.urls import path

from apps.providers import views

app_name = "providers"

urlpatterns = [
    path("status", views.status, name="status"),
    path("usage", views.usage, name="usage"),
    path("providers/<int:pk>/health-check", views.health_check, name="health_check"),
    path("providers/<int:pk>/reset", views.reset, name="reset"),
    path("traces", views.traces, name="traces"),
    path("traces/<int:pk>", views.trace, name="trace"),
    path("traces/chat-message/<int:message_id>", views.trace_of_chat_message, name="trace_of_chat_message"),
]
