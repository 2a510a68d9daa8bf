from datetime import date
from typing import Any

from django import forms
from django.http import QueryDict

from apps.ledger.models import TxStatus, TxType
from apps.ledger.services import MAX_SATS, memo_error

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


AMOUNT_ERROR = "The amount must be a whole number of sats."
AMOUNT_RANGE_ERROR = f"The amount must be between 1 and {MAX_SATS:,} sats."


class ReceiveForm(forms.Form):
    """The Receive card: an invoice for an amount and a memo, refused with the same reasons as the service (and so
    the API) gives."""

    amount_sats = forms.IntegerField(
        label="Amount (sats)",
        min_value=1,
        max_value=MAX_SATS,
        error_messages={
            "required": "Give the amount in sats.",
            "invalid": AMOUNT_ERROR,
            "min_value": AMOUNT_RANGE_ERROR,
            "max_value": AMOUNT_RANGE_ERROR,
        },
        # Numeric keyboard on phones, no spinner steps limits: the range is checked on the server.
        widget=forms.TextInput(attrs={"inputmode": "numeric", "autocomplete": "off"}),
    )
    # No max_length: the limit is in bytes of UTF-8 (a BOLT11 description), which the browser cannot count.
    memo = forms.CharField(label="Memo", required=False, widget=forms.TextInput(attrs={"autocomplete": "off"}))

    def clean_memo(self) -> str:
        memo = str(self.cleaned_data.get("memo") or "")
        error = memo_error(memo)
        if error:
            raise forms.ValidationError(error)
        return memo
