from django import forms

from apps.memory.models import MemoryEntry
from apps.memory.services import CONTENT_MAX, REASON_MAX
from apps.swarm.models import Agent

SEARCH_QUERY_MAX = 2000


class MemorySearchForm(forms.Form):
    q = forms.CharField(
        label="Search",
        max_length=SEARCH_QUERY_MAX,
        error_messages={"required": "Type what to look for: a question or a few words."},
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "e.g. where does the node run?"}),
    )
    context_type = forms.ChoiceField(
        label="Type", required=False, choices=[("", "any type"), *MemoryEntry.ContextType.choices]
    )
    agent = forms.ModelChoiceField(
        label="Agent", required=False, queryset=Agent.objects.order_by("name"), empty_label="any agent"
    )
    everyone = forms.BooleanField(
        label="everyone's memories",
        required=False,
        help_text="Search every user's private memories too, not just yours and the shared ones (this needs the "
        "permission “Can read other users' private memories”).",
    )


class FactForm(forms.Form):
    content = forms.CharField(
        label="Fact",
        max_length=CONTENT_MAX,
        error_messages={"required": "Write the fact to remember."},
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "e.g. The Lightning node runs on a Raspberry Pi."}),
    )
    shared = forms.BooleanField(
        label="shared with everyone",
        required=False,
        help_text="A shared fact is seen by every user and by agents working for anyone; otherwise only you see it.",
    )
    public = forms.BooleanField(
        label="public",
        required=False,
        help_text="A public fact is shared, and may also be told to strangers who pay for Timmy's chat "
        "(POST /api/v1/serve/chat): their prompts get public memories only, never shared or private ones.",
    )


class ForgetForm(forms.Form):
    reason = forms.CharField(
        label="Reason",
        max_length=REASON_MAX,
        error_messages={"required": "Say why this memory should be forgotten."},
    )
