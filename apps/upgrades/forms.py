from django import forms

from apps.upgrades.services import BRANCH_MAX, INSTRUCTION_MAX, REASON_MAX


class RequestForm(forms.Form):
    instruction = forms.CharField(
        label="What should change?",
        max_length=INSTRUCTION_MAX,
        error_messages={"required": "Say what should change."},
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "e.g. Show the number of open tasks on the home page."}),
    )


class BranchForm(forms.Form):
    branch = forms.CharField(
        label="Branch",
        max_length=BRANCH_MAX,
        error_messages={"required": "Name the branch to propose."},
        widget=forms.TextInput(attrs={"placeholder": "e.g. feature/open-tasks", "autocomplete": "off"}),
    )
    description = forms.CharField(
        label="What does it change?",
        max_length=INSTRUCTION_MAX,
        error_messages={"required": "Say what the branch changes."},
        widget=forms.Textarea(attrs={"rows": 2}),
    )


class RejectForm(forms.Form):
    reason = forms.CharField(
        label="Reason",
        max_length=REASON_MAX,
        error_messages={"required": "Say why the upgrade is rejected."},
    )
