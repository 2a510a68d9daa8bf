"""What every API operation promises beyond its own answer, and the means to keep the schema truthful: the error body
they all share and the errors each one can give, enums under their own names, JSON integers, dates and ids that mean
what the schema says, the refusal of query parameters nobody reads, and a JSON 404 for paths that match nothing."""

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import wraps
from typing import Annotated, Any, cast

from django.http import HttpRequest
from django.http.response import HttpResponseBase
from ninja import Field, Router, Schema
from ninja.errors import HttpError, ValidationError
from ninja.operation import Operation
from pydantic import BeforeValidator, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.config import JsonDict
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

# Text the services refuse as empty once control characters and surrounding whitespace are gone (they answer 422 with
# their own words); told to clients as a pattern: at least one character that is neither. Terminal escape sequences,
# which the services also remove, are beyond a pattern: "\x1b[0m" alone matches and is still refused.
VISIBLE_TEXT: JsonDict = {
    "pattern": r"[^\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
}

ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_date_only(value: object) -> object:
    # Pydantic would also read "0" or "1700000000" as a date (seconds since 1970); the schema says YYYY-MM-DD.
    if isinstance(value, str) and not ISO_DATE.fullmatch(value):
        raise PydanticCustomError("date_format", "Input should be a date as YYYY-MM-DD")
    return value


IsoDate = Annotated[date, BeforeValidator(_iso_date_only)]


def _json_integer_only(value: object) -> object:
    # A JSON integer, which may be written 5.0; not "5" or true, which pydantic would also take for 5 and 1.
    if isinstance(value, str | bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


# `Annotated[int, Field(ge=1), JSON_INTEGER]`: limits go before it, or they are documented as unknown keywords
# instead of minimum and maximum.
JSON_INTEGER = BeforeValidator(_json_integer_only)
# The largest id a database keeps (a signed 64-bit integer): a larger one fails in the query instead of finding nothing.
ID_MAX = 2**63 - 1
Id = Annotated[int, Field(ge=1, le=ID_MAX)]


class ValidationErrorOut(Schema):
    type: str = Field(..., description="What kind of problem, e.g. `missing`, `string_too_long`, `extra_forbidden`.")
    loc: list[str | int] = Field(..., description='Where: `["query", "limit"]`, `["body", "payload", "message"]`.')
    msg: str
    ctx: dict[str, Any] | None = Field(None, description="The limit that was broken, when there is one.")


class ProviderAttemptOut(Schema):
    provider: str
    reason: str
    error_class: str


class ErrorOut(Schema):
    detail: str | list[ValidationErrorOut] = Field(
        ..., description="Why, in words; for invalid input (422) a list with one entry per problem."
    )
    retry_after: int | None = Field(
        None, description="When the database is busy (503): seconds to wait before trying again, as `Retry-After`."
    )
    providers: list[ProviderAttemptOut] | None = Field(
        None, description="When no LLM provider answered (503): each provider tried, and why it failed."
    )


# Every operation that needs an account: no or bad token (401), not staff or a session without its CSRF token (403),
# invalid input (422), something it needs is unavailable, the database included (503).
STAFF_ERRORS = (401, 403, 422, 503)
# The paid endpoints have no account to check, only a token.
PAID_ERRORS = (401, 422, 503)


def errors(*codes: int, common: tuple[int, ...] = STAFF_ERRORS) -> dict[int, type[ErrorOut]]:
    """`response={200: TaskOut, **errors(404)}`: the error answers of an operation, all with the shared body."""
    return {code: ErrorOut for code in sorted({*common, *codes})}


ERROR_DESCRIPTIONS = {
    400: "The request body is not JSON.",
    401: "No credentials, or a token that is unknown, revoked, expired or (L402) not paid.",
    402: "Payment required: pay the invoice, then send `Authorization: L402 <macaroon>:<preimage>`.",
    403: "Not allowed: not a staff user, a permission it needs is missing, or a browser session without its CSRF "
    "token.",
    404: "Not found, or not yours to see.",
    409: "Not in a state that allows this.",
    422: "Invalid input, an unknown query parameter included: `detail` says why, or lists each problem with where "
    "it is (`loc`).",
    429: "Too many requests from this address; try again after `Retry-After` seconds.",
    503: "Something it needs is unavailable: no LLM provider answered (`providers` says why, for each), the "
    "Lightning node, or the database is busy (then with `Retry-After` and `retry_after`).",
}
HEADERS = {
    401: {"WWW-Authenticate": "On the paid endpoints, the kind of L402 token problem."},
    402: {"WWW-Authenticate": 'The challenge: `L402 macaroon="…", invoice="…"`.'},
    429: {"Retry-After": "Seconds until the client may ask again."},
    503: {"Retry-After": "When the database is busy: seconds to wait before trying again."},
}
REQUIRED_HEADERS = {402: {"WWW-Authenticate"}, 429: {"Retry-After"}}


def describe_errors(openapi: dict[str, Any]) -> None:
    """Replace the bare HTTP phrase of each error answer with what it means here, and name its headers."""
    for operations in openapi["paths"].values():
        for operation in operations.values():
            for code, answer in operation["responses"].items():
                status = int(code)
                if status in ERROR_DESCRIPTIONS:
                    answer["description"] = ERROR_DESCRIPTIONS[status]
                for name, description in HEADERS.get(status, {}).items():
                    required = name in REQUIRED_HEADERS.get(status, set())
                    answer.setdefault("headers", {})[name] = {
                        "description": description,
                        "required": required,
                        "schema": {"type": "integer" if name == "Retry-After" else "string"},
                    }


@dataclass(frozen=True)
class SchemaName:
    """`Annotated[Task.Status, SchemaName("TaskStatus")]`: the enum under its own name in the schema. Pydantic names
    an enum's schema after its class alone, and Django Ninja keeps one schema per name, so the `Status` of every model
    would otherwise be documented with the values of whichever came last."""

    name: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        schema = handler.resolve_ref_schema(handler(source))
        metadata = dict(schema.get("metadata") or {})
        # After pydantic's own, which titles the schema with the class name.
        metadata["pydantic_js_functions"] = [*metadata.get("pydantic_js_functions", []), self._retitle]
        # The part of a ref before ":" names the schema; the rest only has to be unique.
        named: Any = {**schema, "ref": f"{self.name}:{source.__module__}.{source.__qualname__}", "metadata": metadata}
        return cast(CoreSchema, named)

    def _retitle(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        handler.resolve_ref_schema(json_schema)["title"] = self.name
        return json_schema


def query_parameter_names(operation: Operation) -> frozenset[str]:
    names: set[str] = set()
    for model in operation.models:
        if model.__ninja_param_source__ == "query":
            names.update(getattr(model, "__ninja_flatten_map__", {}))
    return frozenset(names)


Run = Callable[..., HttpResponseBase]


def refuse_unknown_query_parameters(run: Run) -> Run:
    """`api.add_decorator(refuse_unknown_query_parameters, mode="view")`: a query parameter the operation does not
    read is refused with 422 naming it, in the form of Ninja's own validation errors (a misspelt filter would
    otherwise return everything, unfiltered). Who may not call the operation at all hears that first."""
    operation: Operation = run.__self__  # type: ignore[attr-defined]
    if not operation.include_in_schema:
        return run
    known = query_parameter_names(operation)

    @wraps(run)
    def checked(request: HttpRequest, **kwargs: Any) -> HttpResponseBase:
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            # Read the body before anything parses it as a form: the CSRF check of a browser session reads
            # request.POST, which for a multipart body consumes the stream, and Ninja could then not read the body
            # it validates (a 500). Read here, it is kept, and a form body is a 422 like any other bad body.
            request.body  # noqa: B018
        unknown = sorted(set(request.GET) - known)
        if not unknown:
            return run(request, **kwargs)
        refused = operation._run_checks(request)
        if refused is not None:
            return refused
        expected = ", ".join(sorted(known)) or "none"
        problems = [
            {
                "type": "extra_forbidden",
                "loc": ["query", name],
                "msg": f"Unknown query parameter: {name} (this operation reads: {expected}).",
            }
            for name in unknown
        ]
        return operation.api.on_exception(request, ValidationError(problems))

    return checked


# Every method an unknown API path may be asked with; each gets the JSON 404 below.
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
unknown_path_router = Router(auth=None)


@unknown_path_router.api_operation(ALL_METHODS, "/{path:rest}", include_in_schema=False)
def unknown_path(request: HttpRequest, rest: str) -> None:
    """Mounted last: an API path that matches no operation (`/api/v1/tasks/`, `/api/v1/tasks/none`) is a 404 in the
    API's own error body, where Django would answer with an HTML page."""
    raise HttpError(404, f"No API operation at {request.path}.")
