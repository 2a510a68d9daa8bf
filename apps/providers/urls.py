from django.urls import path

from apps.providers import views

app_name = "providers"

urlpatterns = [
    path("status", views.status, name="status"),
    path("providers/<int:pk>/health-check", views.health_check, name="health_check"),
    path("providers/<int:pk>/reset", views.reset, name="reset"),
]
