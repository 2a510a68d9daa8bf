from django import forms

from apps.swarm.services import DESCRIPTION_MAX


class TaskPostForm(forms.Form):
    description = forms.CharField(
        max_length=DESCRIPTION_MAX,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "What should the swarm do?"}),
        help_text="Idle agents bid in sats as soon as it is posted; the lowest bid wins when the auction closes.",
    )
