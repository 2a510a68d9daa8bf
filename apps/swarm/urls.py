from django.urls import path

from apps.swarm import views

app_name = "swarm"

urlpatterns = [
    path("", views.index, name="index"),
    path("tasks/<int:pk>/", views.task_detail, name="task"),
]
