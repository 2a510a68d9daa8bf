import json
import math

import pytest

from apps.events.models import Event
from apps.events.services import DATA_MAX_BYTES, REDACTED, STRING_MAX, InvalidEvent, log_event

pytestmark = pytest.mark.django_db

FORGED = "ok\r\n2026-01-01 INFO admin logged in\x1b[31m"


def logged(**fields):
    """Log one event and read it back as stored."""
    event = log_event(fields.pop("event_type", "tool.completed"), **{"source": "agent", **fields})
    return Event.objects.get(pk=event.pk)


def test_forged_log_line_is_flattened_to_one_line():
    event = logged(data={"output": FORGED})

    assert event.data["output"] == "ok 2026-01-01 INFO admin logged in"


@pytest.mark.parametrize("field", ["source", "task_id", "agent_id"])
def test_forged_log_line_in_a_column_is_flattened_too(field):
    event = logged(**{field: "x\r\nINFO admin\x1b[0m"})

    assert getattr(event, field) == "x INFO admin"


def test_control_characters_in_data_keys_and_nested_values_are_stripped():
    event = logged(data={"bad\nkey": {"list": ["a\x00b", "c\x1b[2Jd", "tab\there"]}})

    assert event.data == {"bad key": {"list": ["ab", "cd", "tab here"]}}


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("\x1b[1;31mred\x1b[0m text", "red text"),
        ("title\x1b]0;pwned\x07 done", "title done"),
        ("link \x1b]8;;http://evil.example\x1b\\here\x1b]8;;\x1b\\", "link here"),
        ("8-bit \x9b31mcsi", "8-bit csi"),
        ("bell\x07 and delete\x7f", "bell and delete"),
    ],
)
def test_terminal_escape_sequences_are_removed(raw, clean):
    assert logged(data={"v": raw}).data["v"] == clean


@pytest.mark.parametrize(
    "raw",
    [
        "admin\u202etxt.exe",  # right-to-left override
        "ad\u200bmin",  # zero-width space
        "\ufeffadmin",  # byte order mark
        "ad\u2066min\u2069",  # bidi isolates
    ],
)
def test_invisible_formatting_characters_that_disguise_text_are_removed(raw):
    assert logged(data={"user": raw}).data["user"] in {"admin", "admintxt.exe"}


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085", "\v", "\f"])
def test_unicode_line_separators_become_a_space(separator):
    assert logged(data={"v": f"one{separator}two"}).data["v"] == "one two"


def test_ordinary_unicode_text_is_kept_as_is():
    text = "Café ✓ 日本語 — naïve “quotes” 🚀"

    assert logged(data={"v": text}).data["v"] == text


@pytest.mark.parametrize("field", ["source", "task_id", "agent_id"])
def test_long_column_values_are_capped_to_the_column_size(field):
    event = logged(**{field: "a" * 500})

    value = getattr(event, field)
    assert len(value) == 64
    assert value.endswith("…")


def test_long_string_in_data_is_truncated_with_an_ellipsis():
    event = logged(data={"output": "x" * (STRING_MAX + 500)})

    assert len(event.data["output"]) == STRING_MAX
    assert event.data["output"].endswith("…")


def test_long_list_in_data_keeps_the_first_hundred_items_and_says_how_many_more():
    event = logged(data={"items": list(range(250))})

    assert event.data["items"][:100] == list(range(100))
    assert event.data["items"][100:] == ["[+150 more]"]


def test_oversized_data_is_replaced_by_a_short_preview():
    big = {"chunks": ["y" * 1500 for _ in range(30)], "task": "summarise"}

    event = logged(data=big)

    assert event.data["_truncated"] is True
    assert set(event.data) == {"_truncated", "preview"}
    assert len(event.data["preview"]) == STRING_MAX
    assert event.data["preview"].startswith('{"chunks": ["yyy')
    assert len(json.dumps(event.data).encode()) < DATA_MAX_BYTES


def test_secret_in_oversized_data_is_redacted_before_the_preview_is_cut():
    big = {"api_key": "sk-live-abcdefghijklmnopqrstuvwxyz", "note": "token=hunter2", "blobs": ["z" * 1500] * 20}

    event = logged(data=big)

    assert "_truncated" in event.data
    assert "sk-live" not in event.data["preview"]
    assert "hunter2" not in event.data["preview"]
    assert REDACTED in event.data["preview"]


def test_deep_nesting_is_cut():
    data: dict = {}
    inner = data
    for _ in range(30):
        inner["child"] = {}
        inner = inner["child"]

    event = logged(data=data)

    depth, node = 0, event.data
    while isinstance(node, dict):
        node, depth = node["child"], depth + 1
    assert node == "[too deep]"
    assert depth == 8


def test_nesting_too_deep_to_encode_is_refused_rather_than_crashing():
    data: list = []
    for _ in range(5000):
        data = [data]

    with pytest.raises(InvalidEvent):
        log_event("tool.completed", source="agent", data={"nested": data})


def test_numbers_booleans_and_null_are_kept():
    data = {"int": 3, "float": 0.25, "negative": -7, "yes": True, "no": False, "none": None, "big": 2**53}

    assert logged(data=data).data == data


def test_tuples_are_stored_as_lists():
    assert logged(data={"pair": (1, "a")}).data == {"pair": [1, "a"]}


def test_non_string_keys_are_stored_as_text():
    assert logged(data={1: "one", None: "none"}).data == {"1": "one", "None": "none"}


@pytest.mark.parametrize(
    "key",
    [
        "api_key",
        "apiKey",
        "APIKey",
        "x-api-key",
        "password",
        "db_password",
        "token",
        "access_token",
        "refreshToken",
        "macaroon",
        "authorization",
        "Authorization",
        "preimage",
        "secret",
        "client_secret",
        "private_key",
        "cookie",
        "mnemonic",
    ],
)
def test_values_under_secret_keys_are_redacted(key):
    event = logged(data={key: "hunter2", "kept": "visible"})

    assert event.data == {key: REDACTED, "kept": "visible"}


def test_secret_keys_are_redacted_at_any_depth_and_whole_structures_under_them_go():
    data = {"request": {"headers": [{"Authorization": "Bearer abc"}], "auth": {"password": {"old": "a", "new": "b"}}}}

    event = logged(data=data)

    assert event.data == {"request": {"headers": [{"Authorization": REDACTED}], "auth": {"password": REDACTED}}}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("tokens_in", 512),
        ("tokens_out", 128),
        ("max_tokens", 1024),
        ("input_tokens", 77),
        ("session_id", "s-42"),
        ("payment_hash", "9f" * 32),
        ("keywords", ["research"]),
        ("passed", True),
        ("secretary", "Ann"),
    ],
)
def test_harmless_keys_that_look_like_secrets_are_not_redacted(key, value):
    assert logged(data={key: value}).data == {key: value}


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Authorization: Bearer abcdefgh12345678", f"Authorization: Bearer {REDACTED}"),
        ("sent with basic dXNlcjpwYXNzd29yZA==", f"sent with basic {REDACTED}"),
        ("using sk-proj-abcdefghijklmnop1234 now", f"using {REDACTED} now"),
        ("Authorization: L402 AgEDbGFiY2RlZg==:0123456789abcdef", f"Authorization: L402 {REDACTED}"),
        ("login password=hunter2 ok", f"login password={REDACTED} ok"),
        ('{"password": "hunter2"}', f'{{"password": "{REDACTED}"}}'),
        ("api_key: abc123, next", f"api_key: {REDACTED}, next"),
        ("preimage=00ff00ff", f"preimage={REDACTED}"),
        ("macaroon: AgEDbGFi", f"macaroon: {REDACTED}"),
        ("postgres://bob:s3cret@db.local/timmy", f"postgres://bob:{REDACTED}@db.local/timmy"),
        ("https://user:pa55@example.com/x", f"https://user:{REDACTED}@example.com/x"),
        ("token tt_" + "a" * 30 + " used", f"token {REDACTED} used"),
        ("DB_PASSWORD=hunter2", f"DB_PASSWORD={REDACTED}"),
        ("export GITHUB_TOKEN=ghp_abcdef", f"export GITHUB_TOKEN={REDACTED}"),
        (
            "GET https://x.example/cb?access_token=abc123&state=1",
            f"GET https://x.example/cb?access_token={REDACTED}&state=1",
        ),
        ("x_api_key=zzz", f"x_api_key={REDACTED}"),
    ],
)
def test_secrets_inside_text_values_are_redacted_and_the_rest_is_kept(raw, clean):
    assert logged(data={"log": raw}).data["log"] == clean


@pytest.mark.parametrize(
    "text",
    [
        "tokens_in=512 tokens_out=128",
        "max_tokens: 1024",
        "https://example.com/docs/page",
        "ask-the-user about it",
        "bearer of bad news",
        "the password was changed",
    ],
)
def test_harmless_text_that_mentions_secret_words_is_kept(text):
    assert logged(data={"log": text}).data["log"] == text


def test_secret_in_a_column_is_redacted():
    event = logged(source="cli password=hunter2", task_id="sk-abcdefghijklmnopqrst")

    assert "hunter2" not in event.source
    assert event.task_id == REDACTED


@pytest.mark.parametrize(
    "data",
    [
        {"tags": {"a", "b"}},
        {"obj": object()},
        {"ratio": math.nan},
        {"ratio": math.inf},
        {"nested": [{"ratio": -math.inf}]},
        {(1, 2): "tuple key"},
        {"raw": b"bytes"},
    ],
    ids=["set", "object", "nan", "inf", "nested-inf", "tuple-key", "bytes"],
)
def test_data_that_is_not_json_is_refused_and_nothing_is_stored(data):
    with pytest.raises(InvalidEvent, match="not JSON"):
        log_event("tool.completed", source="agent", data=data)

    assert not Event.objects.exists()


@pytest.mark.parametrize("data", [[1, 2], "text", 3, ("a", 1)], ids=["list", "str", "int", "tuple"])
def test_data_that_is_not_an_object_at_the_top_is_refused(data):
    with pytest.raises(InvalidEvent, match="must be a JSON object"):
        log_event("tool.completed", source="agent", data=data)

    assert not Event.objects.exists()


def test_caller_data_is_not_modified():
    data = {"password": "hunter2", "output": FORGED}

    logged(data=data)

    assert data == {"password": "hunter2", "output": FORGED}
