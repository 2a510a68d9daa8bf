from datetime import datetime
from typing import Annotated, Any

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema, Status
from ninja.errors import HttpError

from apps.core.api_contract import VISIBLE_TEXT, Id, SchemaName, errors
from apps.core.auth import require_staff
from apps.upgrades import loop, selectors, services
from apps.upgrades.models import Upgrade, UpgradeRequest

router = Router(tags=["upgrades"])
UpgradeStatus = Annotated[Upgrade.Status, SchemaName("UpgradeStatus")]
UpgradeRequestStatus = Annotated[UpgradeRequest.Status, SchemaName("UpgradeRequestStatus")]


class TestsOut(Schema):
    passed: bool
    passed_count: int | None
    failed_count: int | None


class UpgradeOut(Schema):
    id: int
    status: UpgradeStatus
    description: str
    branch: str
    target_branch: str
    risk: str
    files_changed: list[str]
    tests: TestsOut
    proposed_at: datetime

    @staticmethod
    def resolve_tests(obj: Upgrade) -> dict[str, Any]:
        results = obj.test_results or {}
        return {
            "passed": obj.tests_passed,
            "passed_count": results.get("passed_count"),
            "failed_count": results.get("failed_count"),
        }


class UpgradeDetailOut(UpgradeOut):
    instruction: str
    test_results: dict[str, Any]
    base_commit: str
    head_commit: str
    applied_commit: str
    replaced_commit: str
    revert_commit: str
    error_message: str
    rejection_reason: str
    approved_at: datetime | None
    approved_by: str | None
    auto_approved: bool
    rejected_at: datetime | None
    rejected_by: str | None
    applied_at: datetime | None
    rolled_back_at: datetime | None
    rollback_requested_at: datetime | None = Field(
        ..., description="set while the rollback waits for a worker or is being done; cleared if it fails"
    )
    rollback_requested_by: str | None = Field(..., description="who asked for the last rollback")
    rollback_error: str = Field(..., description="why the last rollback failed (the upgrade stayed applied)")

    @staticmethod
    def resolve_approved_by(obj: Upgrade) -> str | None:
        return obj.approved_by.get_username() if obj.approved_by else None

    @staticmethod
    def resolve_rollback_requested_by(obj: Upgrade) -> str | None:
        return obj.rollback_requested_by.get_username() if obj.rollback_requested_by else None

    @staticmethod
    def resolve_rejected_by(obj: Upgrade) -> str | None:
        return obj.rejected_by.get_username() if obj.rejected_by else None


class RejectIn(Schema):
    reason: str = Field(..., min_length=1, max_length=services.REASON_MAX, json_schema_extra=VISIBLE_TEXT)


class BranchIn(Schema):
    branch: str = Field(
        ...,
        min_length=1,
        max_length=services.BRANCH_MAX,
        # What git allows in a branch name, as far as a pattern can say: no control characters, spaces or ~^:?*[\,
        # and not an option (a leading "-").
        pattern=r"^[^\x00-\x20\x7f~^:?*\[\\/-][^\x00-\x20\x7f~^:?*\[\\]*$",
        description="a branch of SELF_MODIFY_REPO",
    )
    description: str = Field(
        ...,
        min_length=1,
        max_length=services.INSTRUCTION_MAX,
        description="what it changes",
        json_schema_extra=VISIBLE_TEXT,
    )


class RequestOut(Schema):
    id: int
    status: UpgradeRequestStatus
    instruction: str = Field(..., description="what was asked for; for a branch, the description of its change")
    branch: str = Field(..., description="the branch proposed as it is; empty for a change a model drafts")
    commit: str = Field(..., description="the commit of the branch that was checked, tested and proposed")
    error_message: str = Field(..., description="why it failed")
    upgrade_id: int | None = Field(..., description="the proposed upgrade, once the worker is done")
    created_at: datetime
    finished_at: datetime | None


def _upgrade(upgrade_id: int) -> Upgrade:
    upgrade = (
        Upgrade.objects.select_related("approved_by", "rejected_by", "rollback_requested_by")
        .filter(pk=upgrade_id)
        .first()
    )
    if upgrade is None:
        raise HttpError(404, f"Upgrade {upgrade_id} not found.")
    return upgrade


def _http_error(exc: services.UpgradeError) -> HttpError:
    if isinstance(exc, services.UpgradeNotFound):
        return HttpError(404, str(exc))
    if isinstance(exc, services.UpgradeNotAllowed):
        return HttpError(403, str(exc))
    if isinstance(exc, services.InvalidUpgrade):
        return HttpError(422, str(exc))
    return HttpError(409, str(exc))  # wrong state, failing tests


@router.get("", response={200: list[UpgradeOut], **errors()}, summary="Upgrades, newest first")
def upgrade_list(
    request: HttpRequest,
    status: UpgradeStatus | None = None,
    limit: int = Query(50, ge=1, le=500),
) -> list[Upgrade]:
    require_staff(request)
    return selectors.upgrades_list(status=status, limit=limit)


@router.post(
    "/branch",
    response={202: RequestOut, **errors(400, 409)},
    summary="Propose an existing branch as it is: checked at once, then tested and proposed by the worker",
    description=(
        "The branch's changed files are checked as they would be proposed, and the request is refused with 422 and "
        "the reason (naming each file) when the branch does not exist or changes nothing, or adds or changes a "
        "symbolic link, a submodule or `.gitmodules`, a binary file, a file over SELF_MODIFY_MAX_FILE_BYTES, an "
        "executable outside SELF_MODIFY_EXECUTABLE_PATHS, a path outside SELF_MODIFY_ALLOWED_PATHS, or Python that "
        "does not parse. Otherwise the commit checked is queued (202): the worker checks it again, runs its tests in "
        "their own worktree and proposes it; follow it at `/api/v1/upgrades/requests/{id}`."
    ),
)
def upgrade_branch_propose(request: HttpRequest, payload: BranchIn) -> Status:
    user = require_staff(request)
    try:
        change = loop.queue_branch(branch=payload.branch, description=payload.description, actor=user)
    except services.UpgradeError as exc:
        raise _http_error(exc) from exc
    return Status(202, change)


@router.get(
    "/requests/{int:request_id}",
    response={200: RequestOut, **errors(404)},
    summary="A change request: queued, running, done (with its upgrade) or failed (with the reason)",
)
def upgrade_request_detail(request: HttpRequest, request_id: Id) -> UpgradeRequest:
    require_staff(request)
    change = UpgradeRequest.objects.filter(pk=request_id).first()
    if change is None:
        raise HttpError(404, f"Change request {request_id} not found.")
    return change


@router.post(
    "/requests/{int:request_id}/retry",
    response={200: RequestOut, **errors(404, 409)},
    summary="Queue a failed change request again (attempts reset, error cleared); the worker drafts it anew",
    description=(
        "Only a failed request can be retried (409 with its state otherwise). A request drafted for a task that has "
        "finished since is retried on its own: the task is neither revived nor paid."
    ),
)
def upgrade_request_retry(request: HttpRequest, request_id: Id) -> UpgradeRequest:
    user = require_staff(request)
    try:
        return services.upgrade_request_retry(request_id=request_id, actor=user)
    except services.UpgradeError as exc:
        raise _http_error(exc) from exc


@router.get(
    "/{int:upgrade_id}",
    response={200: UpgradeDetailOut, **errors(404)},
    summary="One upgrade, with its test results and commits",
)
def upgrade_detail(request: HttpRequest, upgrade_id: Id) -> Upgrade:
    require_staff(request)
    return _upgrade(upgrade_id)


@router.post(
    "/{int:upgrade_id}/approve",
    response={200: UpgradeDetailOut, **errors(404, 409)},
    summary="Approve a proposed upgrade whose tests passed (needs upgrades.approve_upgrade); the worker applies it",
)
def upgrade_approve(request: HttpRequest, upgrade_id: Id) -> Upgrade:
    user = require_staff(request)
    try:
        upgrade = services.upgrade_approve(upgrade_id=upgrade_id, actor=user)
    except services.UpgradeError as exc:
        raise _http_error(exc) from exc
    return _upgrade(upgrade.pk)


@router.post(
    "/{int:upgrade_id}/reject",
    response={200: UpgradeDetailOut, **errors(400, 404, 409)},
    summary="Reject a proposed upgrade, with a reason (needs upgrades.approve_upgrade)",
)
def upgrade_reject(request: HttpRequest, upgrade_id: Id, payload: RejectIn) -> Upgrade:
    user = require_staff(request)
    try:
        upgrade = services.upgrade_reject_and_clean(upgrade_id=upgrade_id, actor=user, reason=payload.reason)
    except services.UpgradeError as exc:
        raise _http_error(exc) from exc
    return _upgrade(upgrade.pk)


@router.post(
    "/{int:upgrade_id}/rollback",
    response={202: UpgradeDetailOut, **errors(404, 409)},
    summary="Roll back an applied upgrade (needs upgrades.approve_upgrade): queued at once, reverted by the worker",
)
def upgrade_rollback(request: HttpRequest, upgrade_id: Id) -> Status:
    user = require_staff(request)
    try:
        upgrade = services.upgrade_rollback_request(upgrade_id=upgrade_id, actor=user)
    except services.UpgradeError as exc:
        raise _http_error(exc) from exc
    return Status(202, _upgrade(upgrade.pk))
