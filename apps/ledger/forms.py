from datetime import date
from typing import Any

from django import forms
from django.http import QueryDict

from apps.ledger.models import TxStatus, TxType

DATE_FORMAT = "%Y-%m-%d"
DATE_ERROR = "Give the date as YYYY-MM-DD, e.g. 2025-01-31."


def _date_field(label: str) -> forms.DateField:
    return forms.DateField(
        label=label,
        required=False,
        input_formats=[DATE_FORMAT],
        error_messages={"invalid": DATE_ERROR},
        widget=forms.DateInput(attrs={"type": "date"}, format=DATE_FORMAT),
    )


class LedgerFilterForm(forms.Form):
    """The filters of the ledger page and of its CSV export (GET parameters), plus `before` for paging."""

    type = forms.ChoiceField(
        label="Type",
        required=False,
        choices=[("", "any type"), *TxType.choices],
        error_messages={"invalid_choice": "Unknown type “%(value)s”: the type is incoming or outgoing."},
    )
    status = forms.ChoiceField(
        label="Status",
        required=False,
        choices=[("", "any status"), *TxStatus.choices],
        error_messages={
            "invalid_choice": f"Unknown status “%(value)s”: the status is one of {', '.join(TxStatus.values)}."
        },
    )
    since = _date_field("Since")
    until = _date_field("Until")
    before = forms.IntegerField(
        required=False,
        min_value=1,
        widget=forms.HiddenInput,
        error_messages={
            "invalid": "“before” is the id of an entry: a whole number.",
            "min_value": "“before” is 1 or more.",
        },
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            raise forms.ValidationError(f"“Since” ({since}) is after “until” ({until}): no entry can match.")
        return data

    def filters(self) -> dict[str, Any]:
        """The keyword arguments of selectors.ledger_entries (without paging), from valid or absent input."""
        data = self.cleaned_data if self.is_bound else {}
        return {
            "tx_type": data.get("type") or None,
            "status": data.get("status") or None,
            "since": data.get("since"),
            "until": data.get("until"),
        }

    def filter_query(self) -> str:
        """The filters as a query string (no `before`): for the CSV link, the pager and the simulate forms."""
        filters = self.filters()
        query = QueryDict(mutable=True)
        for name, key in (("type", "tx_type"), ("status", "status"), ("since", "since"), ("until", "until")):
            value = filters[key]
            if value:
                query[name] = value.isoformat() if isinstance(value, date) else value
        return query.urlencode()
