from typing import Any

from django.conf import settings
from django.contrib import messages
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
    upgrade = get_object_or_404(Upgrade, pk=pk)
    return render(request, "upgrades/diff.html", {"upgrade": upgrade, "files": selectors.diff_files(upgrade.diff)})


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


def _decide(request: HttpRequest, pk: int, decision: str) -> HttpResponse:
    """Approve or reject: 403 without the permission, 404 for an unknown upgrade, 409 when it cannot move, 422 for
    a rejection without a reason; otherwise back to the queue with a message."""
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
            return _page(request, status=422, reject_id=pk, reject_error=error)
        reason = form.cleaned_data["reason"]
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
        return _page(request, status=422, reject_id=pk, reject_error=str(exc))
    except services.UpgradeError as exc:  # wrong state, failing tests
        messages.error(request, f"Upgrade {pk} was not {decision}d: {exc}")
        return _page(request, status=409)
    what = Truncator(upgrade.description).chars(80)
    if decision == "approve":
        messages.success(
            request, f"Approved upgrade {pk} (“{what}”): the worker applies it to {upgrade.target_branch}."
        )
    else:
        messages.success(request, f"Rejected upgrade {pk} (“{what}”). Reason: {upgrade.rejection_reason}")
    return redirect("upgrades:queue")


@staff_required
@require_POST
def approve(request: HttpRequest, pk: int) -> HttpResponse:
    return _decide(request, pk, "approve")


@staff_required
@require_POST
def reject(request: HttpRequest, pk: int) -> HttpResponse:
    return _decide(request, pk, "reject")
