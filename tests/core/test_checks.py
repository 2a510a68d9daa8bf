import stat

from django.core.checks import run_checks

from apps.core.checks import data_dir_errors, sqlite_version_errors
from timmy_site import data_dir
from timmy_site.db.base import DatabaseWrapper


def test_a_worker_that_would_always_look_down_is_caught_at_start_up(settings):
    settings.WORKER_HEARTBEAT_SECONDS = 30
    settings.WORKER_STALE_SECONDS = 10
    ids = [message.id for message in run_checks()]
    assert "timmy.E002" in ids


def test_a_misspelt_worker_step_is_caught_at_start_up(settings):
    settings.WORKER_STEPS = [*settings.WORKER_STEPS, "apps.swarm.worker.close_auctions_typo"]
    messages = [m for m in run_checks() if m.id == "timmy.E004"]
    assert messages and "close_auctions_typo" in messages[0].msg


def test_default_settings_pass_the_checks():
    assert [m.id for m in run_checks() if m.id and m.id.startswith("timmy.")] == []


def test_a_live_feed_that_could_never_send_anything_is_caught_at_start_up(settings):
    settings.WEBSOCKET_EVENT_THROTTLE = 0
    settings.ACTIVITY_FEED_POLL_SECONDS = 0
    ids = [message.id for message in run_checks()]
    assert "timmy.E006" in ids
    assert "timmy.E007" in ids


def test_a_breaker_that_could_never_close_or_never_stay_open_is_caught_at_start_up(settings):
    settings.CIRCUIT_BREAKER_THRESHOLD = 0
    settings.CIRCUIT_BREAKER_RECOVERY_SECONDS = 0
    messages = [m.msg for m in run_checks() if m.id == "timmy.E006"]
    assert "CIRCUIT_BREAKER_THRESHOLD must be at least 1." in messages
    assert "CIRCUIT_BREAKER_RECOVERY_SECONDS must be at least 1." in messages


def test_a_negative_chat_history_is_caught_at_start_up(settings):
    settings.CHAT_HISTORY_MESSAGES = -1
    assert "timmy.E008" in [m.id for m in run_checks()]


def test_an_unknown_lightning_backend_is_refused(settings):
    settings.LIGHTNING_BACKEND = "lnbits"
    assert "timmy.E009" in [m.id for m in run_checks()]


def test_lnd_needs_its_url_and_a_readable_macaroon(settings, tmp_path):
    settings.LIGHTNING_BACKEND = "lnd"
    settings.LND_REST_URL = ""
    settings.LND_MACAROON_PATH = str(tmp_path / "missing.macaroon")
    messages = [m.msg for m in run_checks() if m.id == "timmy.E010"]
    assert any("LND_REST_URL" in m for m in messages) and any("LND_MACAROON_PATH" in m for m in messages)
    (tmp_path / "admin.macaroon").write_bytes(b"\x02\x01")
    settings.LND_REST_URL = "https://127.0.0.1:8080"
    settings.LND_MACAROON_PATH = str(tmp_path / "admin.macaroon")
    assert "timmy.E010" not in [m.id for m in run_checks()]


def test_a_short_or_non_hex_l402_root_key_is_refused(settings):
    for key in ("abcd", "z" * 64):
        settings.L402_ROOT_KEY = key
        assert "timmy.E011" in [m.id for m in run_checks()]
    settings.L402_ROOT_KEY = "ab" * 32
    assert "timmy.E011" not in [m.id for m in run_checks()]


def test_sqlite_releases_that_deadlock_under_connection_churn_are_refused_by_name():
    messages = sqlite_version_errors((3, 51, 1))
    assert [m.id for m in messages] == ["timmy.E012"]
    assert "SQLite 3.51.1 must not be used" in messages[0].msg
    assert "deadlock" in messages[0].msg
    assert sqlite_version_errors((3, 51, 2)) == []
    assert sqlite_version_errors((3, 50, 4)) == []


def test_the_installed_sqlite_is_not_a_known_bad_release():
    assert DatabaseWrapper.Database.sqlite_version_info >= (3, 51, 2)
    assert "timmy.E012" not in [m.id for m in run_checks()]


def test_a_data_dir_others_can_read_is_tightened_at_start_up(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir(mode=0o755)
    (folder / "timmy.sqlite3").write_bytes(b"")
    (folder / "timmy.sqlite3").chmod(0o644)
    (folder / "worktrees").mkdir(mode=0o755)
    assert len(data_dir_errors(folder)[0].msg.split(", ")) == 3

    changed = data_dir.secure(folder)

    assert len(changed) == 3
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "timmy.sqlite3").stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "worktrees").stat().st_mode) == 0o700
    assert data_dir_errors(folder) == []


def test_a_file_made_readable_after_start_up_is_reported_by_the_check(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    data_dir.secure(tmp_path)
    (tmp_path / "admin-password.txt").write_text("secret")
    (tmp_path / "admin-password.txt").chmod(0o644)
    messages = [m for m in run_checks() if m.id == "timmy.E013"]
    assert messages and "admin-password.txt (mode 644)" in messages[0].msg


def test_a_login_throttle_that_would_refuse_every_sign_in_is_caught_at_start_up(settings):
    settings.LOGIN_FAILURES_PER_ACCOUNT = 0
    settings.LOGIN_LOCKOUT_MINUTES = 0
    messages = [m.msg for m in run_checks() if m.id == "timmy.E006"]
    assert "LOGIN_FAILURES_PER_ACCOUNT must be at least 1." in messages
    assert "LOGIN_LOCKOUT_MINUTES must be at least 1." in messages


def test_a_model_setting_that_leaves_no_room_or_no_thread_is_caught_at_start_up(settings):
    settings.EMBEDDED_CONTEXT_TOKENS = 64
    settings.EMBEDDED_THREADS = 0
    settings.EMBEDDING_THREADS = 0
    settings.EMBEDDED_QUEUE_MAX = -1
    messages = [m.msg for m in run_checks() if m.id == "timmy.E006"]
    assert "EMBEDDED_CONTEXT_TOKENS must be at least 256 tokens." in messages
    assert "EMBEDDED_THREADS must be at least 1." in messages
    assert "EMBEDDING_THREADS must be at least 1." in messages
    assert "EMBEDDED_QUEUE_MAX must be 0 (no waiting) or more." in messages


def test_a_machine_where_no_sandbox_can_be_made_is_told_that_proposal_tests_will_not_run(settings):
    settings.SANDBOX_BWRAP = "/nonexistent/bwrap"
    [warning] = [m for m in run_checks() if m.id == "timmy.W001"]
    assert warning.msg.startswith("Proposal tests will not run: bubblewrap is not installed")
    settings.SELF_MODIFY_UNSANDBOXED_TESTS = True
    [warning] = [m for m in run_checks() if m.id == "timmy.W001"]
    assert "runs them anyway" in warning.msg and "high risk" in warning.msg


def test_an_empty_or_unsplittable_test_command_is_caught_at_start_up(settings):
    settings.SELF_MODIFY_TEST_COMMAND = "  "
    assert "timmy.E014" in {m.id for m in run_checks()}
    settings.SELF_MODIFY_TEST_COMMAND = "pytest 'unclosed"
    assert "timmy.E014" in {m.id for m in run_checks()}


def test_a_zero_sandbox_limit_is_caught_at_start_up(settings):
    settings.SANDBOX_MAX_PROCESSES = 0
    assert "timmy.E006" in {m.id for m in run_checks()}
