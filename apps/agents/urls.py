from django.urls import path

from apps.agents import views

app_name = "agents"

urlpatterns = [
    path("chat", views.chat, name="chat"),
    path("chat/new", views.chat_new, name="chat_new"),
    path("chat/stream", views.chat_stream, name="chat_stream"),
    path("chat/<uuid:session_id>", views.chat_session, name="chat_session"),
]
