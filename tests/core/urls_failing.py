"""A URLconf for tests of the error pages: the site's own URLs plus one view that fails as a bug would."""

from django.http import HttpRequest, HttpResponse
from django.urls import path

from timmy_site.urls import urlpatterns as site_urlpatterns


def failing_view(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("secret internals: /srv/timmy/settings.py line 42")


urlpatterns = [path("test-only/fails", failing_view), *site_urlpatterns]
