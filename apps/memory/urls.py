from django.urls import path

from apps.memory import views

app_name = "memory"

urlpatterns = [
    path("memory", views.index, name="index"),
    path("memory/facts", views.fact_add, name="fact_add"),
    path("memory/<int:pk>/forget", views.forget, name="forget"),
]
