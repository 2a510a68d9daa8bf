from django import forms

from apps.events.selectors import event_type_filterable


class EventFilterForm(forms.Form):
    event_type = forms.CharField(required=False, max_length=64)
    task_id = forms.CharField(required=False, max_length=64, label="Task")
    agent_id = forms.CharField(
        required=False,
        max_length=64,
        label="Agent",
        widget=forms.TextInput(attrs={"placeholder": "name or id"}),
    )
    since = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    until = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    before = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def clean_event_type(self) -> str:
        value: str = self.cleaned_data["event_type"].strip()
        if value and not event_type_filterable(value):
            raise forms.ValidationError(f"Unknown event type {value!r}.")
        return value
