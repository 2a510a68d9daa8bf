from typing import Any

from django.db import DatabaseError, InterfaceError
from ninja import NinjaAPI
from ninja.openapi.schema import OpenAPISchema

from apps.agents.api import router as chat_router
from apps.core import database
from apps.core.api_contract import describe_errors, refuse_unknown_query_parameters, unknown_path_router
from apps.core.auth import api_auth
from apps.events.api import router as events_router
from apps.ledger.api import router as ledger_router
from apps.ledger.api import serve_router
from apps.memory.api import router as memory_router
from apps.providers.api import router as providers_router
from apps.swarm.api import router as swarm_router
from apps.upgrades.api import router as upgrades_router


class TimmyAPI(NinjaAPI):
    def get_openapi_schema(self, *, path_prefix: str | None = None, path_params: Any = None) -> OpenAPISchema:
        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        describe_errors(schema)
        return schema


api = TimmyAPI(
    title="Timmy Time API",
    version="1",
    description="Operations API of Timmy Time. Authenticate with `Authorization: Bearer <token>` "
    "(`python manage.py create_api_token USERNAME`) or a logged-in browser session.",
    auth=api_auth,
    urls_namespace="api",
)
# Before authentication and validation, so it sees every request (it lets authentication answer first itself).
api.add_decorator(refuse_unknown_query_parameters, mode="view")
api.add_router("/events", events_router)
api.add_router("/", swarm_router)
api.add_router("/router", providers_router)
api.add_router("/", chat_router)
api.add_router("/memory", memory_router)
api.add_router("/ledger", ledger_router)
api.add_router("/serve", serve_router)
api.add_router("/upgrades", upgrades_router)
# Last: it takes every path the routers above do not.
api.add_router("/", unknown_path_router)
# A busy or unreachable database is a 503 with Retry-After (apps/core/database.py), not a 500.
api.add_exception_handler(DatabaseError, database.api_exception_handler)
api.add_exception_handler(InterfaceError, database.api_exception_handler)
