"""One rule shows URLs without their secrets: userinfo and secret query parameters are
masked wherever a URL is shown (CLI errors, ``config``, ``check``, ``repr(Settings)``)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from paglets_artifacts import Settings, cli
from paglets_artifacts.redaction import redact_text, redact_url
from paglets_artifacts.redis_server import free_port

runner = CliRunner()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@db:6379/0", "redis://:***@db:6379/0"),
        ("redis://app:hunter2@db:6379/0", "redis://app:***@db:6379/0"),
        ("https://ghp_hunter2@git.example/x", "https://***@git.example/x"),
        ("redis://127.0.0.1:1/0?password=hunter2", "redis://127.0.0.1:1/0?password=***"),
        ("redis://db/0?PassWord=hunter2&db=1", "redis://db/0?PassWord=***&db=1"),
        ("http://peer/a?token=hunter2&name=x", "http://peer/a?token=***&name=x"),
        ("http://peer/a?name=x&Signature=hunter2;sig=hunter2", "http://peer/a?name=x&Signature=***;sig=***"),
        ("http://peer/a?secret=hunter2&key=hunter2&api_key=hunter2&access_token=hunter2",
         "http://peer/a?secret=***&key=***&api_key=***&access_token=***"),
        ("https://s3.example/b/o?X-Amz-Credential=hunter2&X-Amz-Signature=hunter2&x-amz-security-token=hunter2",
         "https://s3.example/b/o?X-Amz-Credential=***&X-Amz-Signature=***&x-amz-security-token=***"),
        ("http://peer/a?upload_token=hunter2&client_secret=hunter2", "http://peer/a?upload_token=***&client_secret=***"),
        ("http://peer/a#access_token=hunter2&state=1", "http://peer/a#access_token=***&state=1"),
        ("http://peer:8470/artifacts/abc?name=model.bin", "http://peer:8470/artifacts/abc?name=model.bin"),
        ("http://[::1?password=hunter2", "http://[::1?password=***"),  # does not parse: redacted all the same
        ("unix:///run/redis.sock?db=0&password=hunter2", "unix:///run/redis.sock?db=0&password=***"),
    ],
)
def test_a_url_is_shown_with_userinfo_and_secret_parameters_masked(url, shown):
    assert redact_url(url) == shown


def test_urls_inside_text_are_redacted_and_the_rest_is_left_alone():
    line = "paglets_artifacts_import_url(url='http://peer/a?token=hunter2', owner_agent_id='o') via redis://:pw@db/0"
    assert redact_text(line) == (
        "paglets_artifacts_import_url(url='http://peer/a?token=***', owner_agent_id='o') via redis://:***@db/0"
    )
    assert redact_text("no url here, token=x") == "no url here, token=x"


def test_the_cli_has_no_masking_rule_of_its_own():
    assert not hasattr(cli, "mask_url")


def _invoke(settings: Settings, *args: str, **env: str):
    return runner.invoke(cli.app, list(args), env={**settings.to_env(), **env}, catch_exceptions=False)


@pytest.mark.parametrize("command", [["jobs"], ["check"], ["sweep"], ["jobs", "--json"]])
def test_an_unreachable_redis_with_a_password_query_never_shows_it(settings, command):
    url = f"redis://127.0.0.1:{free_port()}/0?password=hunter2"
    result = _invoke(settings, *command, REDIS_URL=url)
    assert result.exit_code == cli.EXIT_UNAVAILABLE
    assert "hunter2" not in result.stdout + result.stderr
    assert "password=***" in result.stderr


def test_config_and_settings_repr_mask_a_password_query(settings):
    url = "redis://127.0.0.1:6390/0?password=hunter2"
    shown = json.loads(_invoke(settings, "config", "--json", REDIS_URL=url).stdout)
    assert shown["REDIS_URL"] == "redis://127.0.0.1:6390/0?password=***"
    assert "hunter2" not in _invoke(settings, "config", REDIS_URL=url).stdout
    assert "hunter2" not in repr(Settings(redis_url=url))
    assert "redis://127.0.0.1:6390/0?password=***" in repr(Settings(redis_url=url))


def test_config_shows_remote_host_urls_redacted_and_their_keys_masked(settings):
    shown = json.loads(_invoke(
        settings, "config", "--json",
        PAGLETS_ARTIFACTS_ALLOWED_HOSTS="http://peer:8470?token=hunter2",
        PAGLETS_ARTIFACTS_HOST_API_KEYS="http://peer:8470=k3y",
    ).stdout)
    assert shown["PAGLETS_ARTIFACTS_ALLOWED_HOSTS"] == "http://peer:8470?token=***"
    assert shown["PAGLETS_ARTIFACTS_HOST_API_KEYS"] == "http://peer:8470=***"


def test_a_malformed_redis_url_with_a_password_query_is_reported_without_it():
    from paglets_artifacts.settings import SettingsError

    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"REDIS_URL": "127.0.0.1:1?password=hunter2"})
    assert "hunter2" not in str(raised.value) and "REDIS_URL" in str(raised.value)
