from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def staff_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Dashboard pages: anonymous users go to the login page; logged-in non-staff users get a 403 page."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not request.user.is_staff:
            return render(request, "core/forbidden.html", status=403)
        return view(request, *args, **kwargs)

    return wrapper
