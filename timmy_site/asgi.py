import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timmy_site.settings")

# Django must be set up before anything imports models (consumers, routing).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from apps.core.origins import SiteOriginValidator  # noqa: E402
from apps.memory import embeddings  # noqa: E402
from timmy_site.routing import websocket_urlpatterns  # noqa: E402

if settings.PRELOAD_MODELS:
    embeddings.preload()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Scheme, host and port must all be the site's: cookies do not keep another port on localhost out.
        "websocket": SiteOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
