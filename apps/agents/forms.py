from django import forms

from apps.agents.services import MESSAGE_MAX
from apps.events.services import clean_multiline_text


def message_too_long(length: int) -> str:
    return f"The message is {length:,} characters; the limit is {MESSAGE_MAX:,}. Shorten it and send it again."


class ChatForm(forms.Form):
    # No max_length: it would put a maxlength on the textarea, and the browser silently cuts a long paste to it.
    # A message over the limit is refused with the limit instead (here, in the page's script and in the service).
    message = forms.CharField(
        strip=True,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "Ask Timmy…", "autofocus": True}),
    )
    # The conversation this form continues; empty: the one the browser session last used, or a new one.
    session = forms.UUIDField(required=False, widget=forms.HiddenInput)

    def clean_message(self) -> str:
        text = self.cleaned_data["message"]
        # Counted as the service counts it: without control characters, with \r\n (as browsers send a line
        # break) counted as one.
        length = len(clean_multiline_text(text).strip())
        if not length:
            raise forms.ValidationError("The message is empty.", code="required")
        if length > MESSAGE_MAX:
            raise forms.ValidationError(message_too_long(length), code="max_length")
        return str(text)
