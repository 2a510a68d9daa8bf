from django.urls import path

from apps.upgrades import views

app_name = "upgrades"

urlpatterns = [
    path("self-modify/queue", views.queue, name="queue"),
    path("self-modify/queue/requests", views.request_change, name="request"),
    path("self-modify/queue/branches", views.propose_branch, name="propose_branch"),
    path("self-modify/queue/requests/<int:pk>/retry", views.retry_request, name="retry_request"),
    path("self-modify/queue/<int:pk>/diff", views.diff, name="diff"),
    path("self-modify/queue/<int:pk>/approve", views.approve, name="approve"),
    path("self-modify/queue/<int:pk>/reject", views.reject, name="reject"),
]
