from ninja import NinjaAPI

from apps.agents.api import router as chat_router
from apps.core.auth import api_auth
from apps.events.api import router as events_router
from apps.ledger.api import router as ledger_router
from apps.ledger.api import serve_router
from apps.memory.api import router as memory_router
from apps.providers.api import router as providers_router
from apps.swarm.api import router as swarm_router
from apps.upgrades.api import router as upgrades_router

api = NinjaAPI(
    title="Timmy Time API",
    version="1",
    description="Operations API of Timmy Time. Authenticate with `Authorization: Bearer <token>` "
    "(`python manage.py create_api_token USERNAME`) or a logged-in browser session.",
    auth=api_auth,
    urls_namespace="api",
)
api.add_router("/events", events_router)
api.add_router("/", swarm_router)
api.add_router("/router", providers_router)
api.add_router("/", chat_router)
api.add_router("/memory", memory_router)
api.add_router("/ledger", ledger_router)
api.add_router("/serve", serve_router)
api.add_router("/upgrades", upgrades_router)
