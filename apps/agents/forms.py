from django import forms

from apps.agents.services import MESSAGE_MAX


class ChatForm(forms.Form):
    message = forms.CharField(
        max_length=MESSAGE_MAX,
        strip=True,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "Ask Timmy…", "autofocus": True}),
    )
