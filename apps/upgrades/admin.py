"""The approval console: upgrades are read-only here and move only through the services, in actions that confirm
first, need upgrades.approve_upgrade, and report what they did and what they skipped."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.humanize.templatetags.humanize import naturaltime
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.text import Truncator

from apps.core.selectors import workers_alive_count
from apps.upgrades import sandbox, selectors, services
from apps.upgrades.models import Upgrade, UpgradeRequest

CONFIRMATION_TEMPLATE = "admin/upgrades/upgrade/action_confirmation.html"
DECISION_TEMPLATE = "admin/upgrades/upgrade/decision_confirmation.html"
MAIN_FIELDS = ("description", "instruction", "status", "risk", "auto_approved", "attempts")
GIT_FIELDS = (
    "repo_path", "target_branch", "branch", "worktree_path", "files_changed", "base_commit", "head_commit",
    "applied_commit", "replaced_commit", "revert_commit", "claimed_by", "lease_expires_at", "apply_attempts",
    "rollback_attempts",
)  # fmt: skip
DECISION_FIELDS = (
    "proposed_at", "approved_at", "approved_by", "rejected_at", "rejected_by", "rejection_reason", "applied_at",
    "rollback_requested_at", "rollback_requested_by", "rolled_back_at", "error_message", "rollback_error",
)  # fmt: skip
NO_WORKER = (
    "No worker is running, so nothing is rolled back yet: start one (`manage.py run_worker`, or `make run`) and it "
    "picks the queued rollbacks up."
)


def tests_summary(results: dict[str, Any]) -> str:
    if not results:
        return "not tested"
    if results.get("not_run"):
        return "✗ not run: no sandbox"
    unsandboxed = " ⚠ not sandboxed" if results.get("sandbox") == sandbox.UNSANDBOXED else ""
    if results.get("passed"):
        return f"✓ {results.get('passed_count', 0)} passed{unsandboxed}"
    failed = "timed out" if results.get("timed_out") else f"{results.get('failed_count', 0)} failed"
    passed = f", {results['passed_count']} passed" if results.get("passed_count") else ""
    return f"✗ {failed}{passed}{unsandboxed}"


def _skip_reason(exc: services.UpgradeError, upgrade: Upgrade) -> str:
    if isinstance(exc, services.UpgradeRollbackQueued):
        return f"#{upgrade.pk}'s rollback is already queued"
    if isinstance(exc, services.UpgradeWrongState):
        return f"#{upgrade.pk} is {upgrade.get_status_display().lower()}"
    if isinstance(exc, services.UpgradeTestsFailed):
        return f"#{upgrade.pk} has failing tests"
    if isinstance(exc, services.UpgradeNotFound):
        return f"#{upgrade.pk} no longer exists"
    return f"#{upgrade.pk}: {exc}"


@admin.register(Upgrade)
class UpgradeAdmin(admin.ModelAdmin):
    list_display = [
        "id", "summary", "status", "risk", "tests", "files", "branch", "target_branch", "age",
    ]  # fmt: skip
    list_display_links = ["id", "summary"]
    list_filter = ["status", "risk", "auto_approved", "target_branch"]
    search_fields = ["description", "branch"]
    show_full_result_count = False
    change_form_template = "admin/upgrades/upgrade/change_form.html"
    actions = ["approve_upgrades", "reject_upgrades", "roll_back_upgrades"]
    fieldsets = [
        (None, {"fields": MAIN_FIELDS}),
        ("Decisions", {"fields": DECISION_FIELDS}),
        ("Git", {"fields": GIT_FIELDS}),
    ]
    readonly_fields = [*MAIN_FIELDS, *DECISION_FIELDS, *GIT_FIELDS]

    def view_on_site(self, obj: Upgrade) -> str:
        return reverse("upgrades:diff", args=[obj.pk])  # get_absolute_url is this page

    def get_queryset(self, request: HttpRequest) -> QuerySet[Upgrade]:
        # A diff may be thousands of lines: the list never shows it, and the change page reads it once.
        return super().get_queryset(request).defer("diff", "diff_preview")

    @admin.display(description="description")
    def summary(self, obj: Upgrade) -> str:
        return Truncator(" ".join(obj.description.split())).chars(80)

    @admin.display(description="tests")
    def tests(self, obj: Upgrade) -> str:
        return tests_summary(obj.test_results)

    @admin.display(description="files")
    def files(self, obj: Upgrade) -> int:
        return len(obj.files_changed)

    @admin.display(description="age", ordering="proposed_at")
    def age(self, obj: Upgrade) -> str:
        return str(naturaltime(obj.proposed_at))

    # Read-only: an upgrade moves only through the services, which check the state and record the event.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Upgrade | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Upgrade | None = None) -> bool:
        return False  # the worker prunes old finished upgrades; their events stay

    def has_view_permission(self, request: HttpRequest, obj: Upgrade | None = None) -> bool:
        return super().has_view_permission(request, obj) or self.has_approve_permission(request)

    def has_approve_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(services.APPROVE_PERMISSION))

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        upgrade = self.get_object(request, object_id)
        if upgrade is not None:
            results = upgrade.test_results or {}
            extra_context = {
                **(extra_context or {}),
                "upgrade": upgrade,
                "files": selectors.diff_files(upgrade.diff),
                "tests": results,
                "tests_summary": tests_summary(results),
                "events": list(selectors.upgrade_events(upgrade.pk)),
                "audit_limit": selectors.AUDIT_LIMIT,
                "diff_url": reverse("upgrades:diff", args=[upgrade.pk]),
                "workers_alive": workers_alive_count() if upgrade.rollback_queued else None,
                # The buttons for this record: only those its state allows, only for those who may use them.
                "record_actions": self._record_actions(request, upgrade),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    # --- buttons on the change page: one record, confirmed on a page of their own, the same services ---

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        record = [
            path(
                f"<path:object_id>/{decision}/",
                self.admin_site.admin_view(self.decision_view),
                {"decision": decision},
                name=f"{info[0]}_{info[1]}_{decision}",
            )
            for decision in DECISIONS
        ]
        return record + super().get_urls()

    def _record_actions(self, request: HttpRequest, upgrade: Upgrade) -> list[tuple[str, str]]:
        if not self.has_approve_permission(request):
            return []
        return [
            (reverse(f"admin:upgrades_upgrade_{name}", args=[upgrade.pk]), move.label)
            for name, move in DECISIONS.items()
            if not move.refusal(upgrade)
        ]

    def decision_view(self, request: HttpRequest, object_id: str, decision: str) -> HttpResponse:
        """GET: what the decision will do, with a confirm button (and a reason for a rejection). POST: the service
        call, then back to the change page with a message. 403 without the permission the bulk actions need, 404
        for an unknown upgrade, 409 with the reason when its state does not allow it, 422 for a missing reason."""
        if not self.has_approve_permission(request):
            raise PermissionDenied
        upgrade = self.get_object(request, object_id)
        if upgrade is None:
            raise Http404(f"Upgrade {object_id} not found.")
        move = DECISIONS[decision]
        refusal = move.refusal(upgrade)
        reason = request.POST.get("reason", "").strip()
        if request.method != "POST" or refusal or (move.asks_reason and not reason):
            status = 409 if refusal else 422 if request.method == "POST" else 200
            error = refusal or ("Say why the upgrade is rejected." if status == 422 else "")
            return self._decision_page(request, upgrade, move, error=error, status=status)
        try:
            move.run(upgrade_id=upgrade.pk, actor=request.user, reason=reason)
        except services.UpgradeError as exc:
            status = 422 if isinstance(exc, services.InvalidUpgrade) else 409
            return self._decision_page(request, upgrade, move, error=str(exc), status=status)
        message = move.done.format(pk=upgrade.pk)
        self.log_change(request, upgrade, f"{move.label}: {reason}" if reason else move.label)
        self.message_user(request, message, messages.SUCCESS)
        if decision == "rollback" and not workers_alive_count():
            self.message_user(request, NO_WORKER, messages.WARNING)
        return HttpResponseRedirect(reverse("admin:upgrades_upgrade_change", args=[upgrade.pk]))

    def _decision_page(
        self, request: HttpRequest, upgrade: Upgrade, move: "Decision", *, error: str, status: int
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": f"{move.label} upgrade {upgrade.pk}?",
            "opts": self.opts,
            "original": upgrade,
            "upgrade": upgrade,
            "intro": move.intro.format(branch=upgrade.branch, target=upgrade.target_branch),
            "submit": move.submit,
            "ask_reason": move.asks_reason,
            "reason": request.POST.get("reason", ""),
            "reason_max": services.REASON_MAX,
            "error": error,
            "can_move": not move.refusal(upgrade),
            "change_url": reverse("admin:upgrades_upgrade_change", args=[upgrade.pk]),
        }
        return TemplateResponse(request, DECISION_TEMPLATE, context, status=status)

    # --- actions: confirm, then one service call per upgrade ---

    def _confirm(
        self,
        request: HttpRequest,
        *,
        action: str,
        title: str,
        intro: str,
        upgrades: list[Upgrade],
        movable: Callable[[Upgrade], str],
        submit: str,
        ask_reason: bool = False,
        reason_error: str = "",
    ) -> TemplateResponse:
        rows = [(upgrade, movable(upgrade)) for upgrade in upgrades]
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "intro": intro,
            "opts": self.model._meta,
            "action": action,
            "rows": rows,
            "will_move": sum(1 for _, skip in rows if not skip),
            "submit": submit,
            "ask_reason": ask_reason,
            "reason": request.POST.get("reason", ""),
            "reason_error": reason_error,
            "reason_max": services.REASON_MAX,
            "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
        }
        return TemplateResponse(request, CONFIRMATION_TEMPLATE, context)

    def _apply(
        self, request: HttpRequest, upgrades: list[Upgrade], move: Callable[[Upgrade], object], done: str
    ) -> None:
        moved = 0
        skipped: list[str] = []
        for upgrade in upgrades:
            try:
                move(upgrade)
            except services.UpgradeError as exc:
                skipped.append(_skip_reason(exc, upgrade))
                continue
            moved += 1
        self.message_user(request, f"{done} {moved} upgrade(s).", messages.SUCCESS if moved else messages.INFO)
        if skipped:
            self.message_user(request, f"Skipped {len(skipped)}: {'; '.join(skipped)}.", messages.WARNING)

    @admin.action(description="Approve the selected upgrades", permissions=["approve"])
    def approve_upgrades(self, request: HttpRequest, queryset: QuerySet[Upgrade]) -> TemplateResponse | None:
        upgrades = list(queryset.order_by("id"))
        if request.POST.get("confirm") != "yes":
            return self._confirm(
                request,
                action="approve_upgrades",
                title="Approve upgrades?",
                intro="Approved upgrades are applied to their target branch by the worker. An upgrade.approved "
                "event records that you approved them.",
                upgrades=upgrades,
                movable=_approvable,
                submit="Yes, approve",
            )
        self._apply(
            request,
            upgrades,
            lambda upgrade: services.upgrade_approve(upgrade_id=upgrade.pk, actor=request.user),
            "Approved",
        )
        return None

    @admin.action(description="Reject the selected upgrades", permissions=["approve"])
    def reject_upgrades(self, request: HttpRequest, queryset: QuerySet[Upgrade]) -> TemplateResponse | None:
        upgrades = list(queryset.order_by("id"))
        reason = request.POST.get("reason", "").strip()
        confirmed = request.POST.get("confirm") == "yes"
        if not confirmed or not reason:
            return self._confirm(
                request,
                action="reject_upgrades",
                title="Reject upgrades?",
                intro="Rejected upgrades are never applied; the worker removes their branches. The reason is kept "
                "with each one, and an upgrade.rejected event records that you rejected them.",
                upgrades=upgrades,
                movable=_proposed,
                submit="Yes, reject",
                ask_reason=True,
                reason_error="Say why these upgrades are rejected." if confirmed else "",
            )
        self._apply(
            request,
            upgrades,
            lambda upgrade: services.upgrade_reject_and_clean(upgrade_id=upgrade.pk, actor=request.user, reason=reason),
            "Rejected",
        )
        return None

    @admin.action(description="Roll back the selected applied upgrades", permissions=["approve"])
    def roll_back_upgrades(self, request: HttpRequest, queryset: QuerySet[Upgrade]) -> TemplateResponse | None:
        upgrades = list(queryset.order_by("id"))
        if request.POST.get("confirm") != "yes":
            return self._confirm(
                request,
                action="roll_back_upgrades",
                title="Roll back upgrades?",
                intro="Each applied upgrade is queued for rollback: the worker undoes it with a revert commit on its "
                "target branch (its history stays). An upgrade.rollback_requested event records that you asked.",
                upgrades=upgrades,
                movable=_applied,
                submit="Yes, roll back",
            )
        # Git runs in the worker, not in this request: queue each one and say what happens next.
        queued: list[int] = []
        skipped: list[str] = []
        for upgrade in upgrades:
            try:
                services.upgrade_rollback_request(upgrade_id=upgrade.pk, actor=request.user)
            except services.UpgradeError as exc:
                skipped.append(_skip_reason(exc, upgrade))
                continue
            queued.append(upgrade.pk)
        if len(queued) == 1:
            self.message_user(
                request, f"Rollback of upgrade {queued[0]} queued: a worker reverts it in a moment.", messages.SUCCESS
            )
        elif queued:
            numbers = ", ".join(str(pk) for pk in queued)
            self.message_user(
                request, f"Rollback of upgrades {numbers} queued: a worker reverts them in a moment.", messages.SUCCESS
            )
        else:
            self.message_user(request, "No rollback queued.", messages.INFO)
        if skipped:
            self.message_user(request, f"Skipped {len(skipped)}: {'; '.join(skipped)}.", messages.WARNING)
        if queued and not workers_alive_count():
            self.message_user(request, NO_WORKER, messages.WARNING)
        return None


@dataclass(frozen=True)
class Decision:
    label: str
    intro: str
    submit: str
    done: str
    refusal: Callable[[Upgrade], str]  # why this upgrade cannot take it now, "" if it can
    run: Callable[..., object]
    asks_reason: bool = False


DECISIONS: dict[str, Decision] = {
    "approve": Decision(
        label="Approve",
        intro="Approving it merges branch {branch} into {target}: the worker applies it in a moment. An "
        "upgrade.approved event records that you approved it.",
        submit="Yes, approve and merge",
        done="Approved upgrade {pk}: the worker applies it.",
        refusal=selectors.upgrade_approve_refusal,
        run=lambda *, upgrade_id, actor, reason: services.upgrade_approve(upgrade_id=upgrade_id, actor=actor),
    ),
    "reject": Decision(
        label="Reject",
        intro="Rejecting it means branch {branch} is never merged into {target}; the branch and its worktree are "
        "removed. The reason is kept with it, and an upgrade.rejected event records that you rejected it.",
        submit="Yes, reject",
        done="Rejected upgrade {pk}.",
        refusal=selectors.upgrade_reject_refusal,
        run=lambda *, upgrade_id, actor, reason: services.upgrade_reject_and_clean(
            upgrade_id=upgrade_id, actor=actor, reason=reason
        ),
        asks_reason=True,
    ),
    "rollback": Decision(
        label="Roll back",
        intro="Rolling it back queues a revert of its merge on {target}: the worker commits the revert in a moment "
        "(the history stays). An upgrade.rollback_requested event records that you asked.",
        submit="Yes, roll back",
        done="Rollback of upgrade {pk} queued: a worker reverts it in a moment.",
        refusal=selectors.upgrade_rollback_refusal,
        run=lambda *, upgrade_id, actor, reason: services.upgrade_rollback_request(upgrade_id=upgrade_id, actor=actor),
    ),
}


# What the confirmation page says about an upgrade the action would skip ("" when it would not).
def _proposed(upgrade: Upgrade) -> str:
    if upgrade.status != Upgrade.Status.PROPOSED:
        return f"skipped: it is {upgrade.get_status_display().lower()}, not proposed"
    return ""


def _approvable(upgrade: Upgrade) -> str:
    if upgrade.status == Upgrade.Status.PROPOSED and not upgrade.tests_passed:
        return "skipped: its tests did not pass"
    return _proposed(upgrade)


def _applied(upgrade: Upgrade) -> str:
    if upgrade.status != Upgrade.Status.APPLIED:
        return f"skipped: it is {upgrade.get_status_display().lower()}, not applied"
    if upgrade.rollback_queued:
        return "skipped: its rollback is already queued"
    return ""


@admin.register(UpgradeRequest)
class UpgradeRequestAdmin(admin.ModelAdmin):
    list_display = ["id", "summary", "status", "requested_by", "created_at", "upgrade_link"]
    list_display_links = ["id", "summary"]
    list_filter = ["status"]
    list_select_related = ["requested_by", "upgrade"]
    search_fields = ["instruction", "branch"]
    show_full_result_count = False
    raw_id_fields = ["task", "upgrade"]
    readonly_fields = (
        "instruction", "branch", "commit", "status", "requested_by", "task", "upgrade", "error_message", "created_at",
        "claimed_by", "lease_expires_at", "attempts", "finished_at",
    )  # fmt: skip
    fields = readonly_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[UpgradeRequest]:
        return super().get_queryset(request).defer("upgrade__diff", "upgrade__diff_preview")

    @admin.display(description="instruction")
    def summary(self, obj: UpgradeRequest) -> str:
        return Truncator(" ".join(obj.instruction.split())).chars(80)

    @admin.display(description="upgrade", ordering="upgrade")
    def upgrade_link(self, obj: UpgradeRequest) -> str:
        if obj.upgrade is None:
            return "-"
        upgrade = obj.upgrade
        return format_html('<a href="{}">#{} ({})</a>', upgrade.get_absolute_url(), upgrade.pk, upgrade.status)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # asked for on the queue page, by `self_modify --queue` or by a code task

    def has_change_permission(self, request: HttpRequest, obj: UpgradeRequest | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: UpgradeRequest | None = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: UpgradeRequest | None = None) -> bool:
        return super().has_view_permission(request, obj) or request.user.has_perm(services.APPROVE_PERMISSION)
