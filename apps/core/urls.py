from django.urls import path

from apps.core import views

urlpatterns = [
    path("", views.home, name="home"),
    path("self-modify/queue", views.not_built, {"page": "upgrades"}, name="upgrades"),
]
