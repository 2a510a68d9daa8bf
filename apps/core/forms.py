from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError


class AdminLoginForm(AdminAuthenticationForm):
    """The admin's login form, saying why a locked-out sign-in was refused (see apps.core.auth)."""

    def get_invalid_login_error(self) -> ValidationError:
        lockout = getattr(self.request, "login_lockout", None)
        if lockout is not None:
            return ValidationError(lockout.message, code="throttled")
        return super().get_invalid_login_error()
