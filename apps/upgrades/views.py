from typing import Any

from django.conf import settings
from django.contrib import messages
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.text import Truncator
from django.views.decorators.http import require_POST, require_safe

from apps.core.decorators import staff_required
from apps.upgrades import loop, sandbox, selectors, services
from apps.upgrades.forms import BranchForm, RejectForm, RequestForm
from apps.upgrades.models import Upgrade


def _page(
    request: HttpRequest,
    *,
    status: int = 200,
    request_form: RequestForm | None = None,
    branch_form: BranchForm | None = None,
    reject_id: int | None = None,
    reject_error: str = "",
) -> HttpResponse:
    context: dict[str, Any] = {
        "waiting": selectors.upgrades_waiting(),
        "history": selectors.upgrades_history(),
        "history_limit": selectors.HISTORY_LIMIT,
        "requests": selectors.upgrade_requests_open(),
        "failed_requests": selectors.upgrade_requests_failed(),
        "failed_limit": selectors.FAILED_REQUESTS_LIMIT,
        "request_form": request_form or RequestForm(),
        "branch_form": branch_form or BranchForm(),
        "can_approve": request.user.has_perm(services.APPROVE_PERMISSION),
        "reject_id": reject_id,
        "reject_error": reject_error,
        "reason_max": services.REASON_MAX,
        "timeout_hours": settings.UPGRADE_TIMEOUT_HOURS,
        "sandbox": sandbox.overview(),
    }
    return render(request, "upgrades/queue.html", context, status=status)


def _refused(request: HttpRequest, reason: str, *, status: int) -> HttpResponse:
    return render(request, "upgrades/refused.html", {"reason": reason}, status=status)


@staff_required
@require_safe
def queue(request: HttpRequest) -> HttpResponse:
    return _page(request)


@staff_required
@require_safe
def diff(request: HttpRequest, pk: int) -> HttpResponse:
    return _diff_page(request, get_object_or_404(_with_people(), pk=pk))


def _with_people() -> QuerySet[Upgrade]:
    return Upgrade.objects.select_related("approved_by", "rejected_by", "rollback_requested_by")


def _diff_page(request: HttpRequest, upgrade: Upgrade, *, status: int = 200, reject_error: str = "") -> HttpResponse:
    context = {
        "upgrade": upgrade,
        "files": selectors.diff_files(upgrade.diff),
        "tests": upgrade.test_results or {},
        "can_approve": request.user.has_perm(services.APPROVE_PERMISSION),
        "approve_refusal": selectors.upgrade_approve_refusal(upgrade),
        "reject_refusal": selectors.upgrade_reject_refusal(upgrade),
        "reject_error": reject_error,
        "reason_max": services.REASON_MAX,
    }
    return render(request, "upgrades/diff.html", context, status=status)


@staff_required
@require_POST
def request_change(request: HttpRequest) -> HttpResponse:
    form = RequestForm(request.POST)
    if form.is_valid():
        try:
            change = services.upgrade_request_create(instruction=form.cleaned_data["instruction"], actor=request.user)
        except services.InvalidUpgrade as exc:
            form.add_error("instruction", str(exc))
        else:
            messages.success(
                request,
                f"Queued change request {change.pk}: the worker drafts it on a branch, runs the tests, and proposes "
                "it here for approval.",
            )
            return redirect(reverse("upgrades:queue") + "#upgrade-requests")
    return _page(request, status=400, request_form=form)


@staff_required
@require_POST
def propose_branch(request: HttpRequest) -> HttpResponse:
    """Check the branch at once (a refusal says why on the form, with 422) and queue it for the worker, which tests
    and proposes it."""
    form = BranchForm(request.POST)
    if not form.is_valid():
        return _page(request, status=400, branch_form=form)
    try:
        change = loop.queue_branch(
            branch=form.cleaned_data["branch"], description=form.cleaned_data["description"], actor=request.user
        )
    except services.UpgradeError as exc:
        form.add_error("branch", str(exc))
        return _page(request, status=422, branch_form=form)
    messages.success(
        request,
        f"Queued {change.branch} at {change.commit[:12]} (change request {change.pk}): the worker runs its tests in "
        "its own worktree and proposes it here for approval.",
    )
    return redirect(reverse("upgrades:queue") + "#upgrade-requests")


def _from_diff(request: HttpRequest) -> bool:
    # Where the decision was made: its answers (errors too) go back there.
    return request.POST.get("next") == "diff"


def _decision_refused(
    request: HttpRequest, pk: int, *, status: int, error: str = "", reject_error: str = ""
) -> HttpResponse:
    if error:
        messages.error(request, error)
    if _from_diff(request):
        return _diff_page(request, get_object_or_404(_with_people(), pk=pk), status=status, reject_error=reject_error)
    return _page(request, status=status, reject_id=pk if reject_error else None, reject_error=reject_error)


def _decide(request: HttpRequest, pk: int, decision: str) -> HttpResponse:
    """Approve or reject: 403 without the permission, 404 for an unknown upgrade, 409 when it cannot move, 422 for
    a rejection without a reason. An approval is first shown for confirmation (what will be merged where) and made
    only when that page is submitted (`confirm=yes`). Then back to the page it was decided on, with a message."""
    if not request.user.has_perm(services.APPROVE_PERMISSION):
        return _refused(
            request, "Approving or rejecting upgrades needs the permission upgrades.approve_upgrade.", status=403
        )
    reason = ""
    if decision == "reject":
        form = RejectForm(request.POST)
        if not form.is_valid():
            if not Upgrade.objects.filter(pk=pk).exists():
                raise Http404(f"Upgrade {pk} not found.")
            error = " ".join(str(message) for message in form.errors["reason"])
            return _decision_refused(request, pk, status=422, reject_error=error)
        reason = form.cleaned_data["reason"]
    elif request.POST.get("confirm") != "yes":
        upgrade = get_object_or_404(_with_people(), pk=pk)
        refusal = selectors.upgrade_approve_refusal(upgrade)
        if refusal:
            return _decision_refused(request, pk, status=409, error=f"Upgrade {pk} was not approved: {refusal}")
        context = {"upgrade": upgrade, "next": "diff" if _from_diff(request) else "queue"}
        return render(request, "upgrades/approve_confirm.html", context)
    try:
        if decision == "approve":
            upgrade = services.upgrade_approve(upgrade_id=pk, actor=request.user)
        else:
            upgrade = services.upgrade_reject_and_clean(upgrade_id=pk, actor=request.user, reason=reason)
    except services.UpgradeNotFound as exc:
        raise Http404(str(exc)) from exc
    except services.UpgradeNotAllowed as exc:
        return _refused(request, str(exc), status=403)
    except services.InvalidUpgrade as exc:
        return _decision_refused(request, pk, status=422, reject_error=str(exc))
    except services.UpgradeError as exc:  # wrong state, failing tests
        return _decision_refused(request, pk, status=409, error=f"Upgrade {pk} was not {decision}d: {exc}")
    what = Truncator(upgrade.description).chars(80)
    if decision == "approve":
        messages.success(
            request, f"Approved upgrade {pk} (“{what}”): the worker applies it to {upgrade.target_branch}."
        )
    else:
        messages.success(request, f"Rejected upgrade {pk} (“{what}”). Reason: {upgrade.rejection_reason}")
    if _from_diff(request):
        return redirect("upgrades:diff", pk=pk)
    return redirect("upgrades:queue")


@staff_required
@require_POST
def approve(request: HttpRequest, pk: int) -> HttpResponse:
    return _decide(request, pk, "approve")


@staff_required
@require_POST
def reject(request: HttpRequest, pk: int) -> HttpResponse:
    return _decide(request, pk, "reject")


@staff_required
@require_POST
def retry_request(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        change = services.upgrade_request_retry(request_id=pk, actor=request.user)
    except services.UpgradeNotFound as exc:
        raise Http404(str(exc)) from exc
    except services.UpgradeNotAllowed as exc:
        return _refused(request, str(exc), status=403)
    except services.UpgradeError as exc:  # not failed (any more)
        messages.error(request, f"Change request {pk} was not retried: {exc}")
        return _page(request, status=409)
    messages.success(
        request,
        f"Change request {change.pk} is queued again: the worker drafts it anew, with a fresh count of attempts.",
    )
    return redirect(reverse("upgrades:queue") + "#upgrade-requests")
