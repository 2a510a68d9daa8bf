from django import forms

from apps.events.models import EventType, is_known_event_type


class EventFilterForm(forms.Form):
    event_type = forms.CharField(required=False, max_length=64)
    task_id = forms.CharField(required=False, max_length=64, label="Task")
    agent_id = forms.CharField(required=False, max_length=64, label="Agent")
    since = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    until = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    before = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    type_choices = EventType.values

    def clean_event_type(self) -> str:
        value: str = self.cleaned_data["event_type"].strip()
        if value and not is_known_event_type(value):
            raise forms.ValidationError(f"Unknown event type {value!r}.")
        return value
