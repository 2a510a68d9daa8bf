from django.urls import path

from apps.ledger import views

app_name = "ledger"

urlpatterns = [
    path("lightning/ledger", views.index, name="index"),
    path("lightning/ledger.csv", views.csv_export, name="csv"),
    path("lightning/ledger/receive", views.receive, name="receive"),
    path("lightning/ledger/live", views.live, name="live"),
    path("lightning/ledger/<str:payment_hash>/simulate", views.simulate, name="simulate"),
]
