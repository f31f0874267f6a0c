"""Settings precedence and validation; logs that never carry patient identifiers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.errors import ConfigError
from gateway.logs import JsonFormatter, RedactingFilter, redact


def test_defaults_match_the_contract_table() -> None:
    """Port 8080, DIMSE 11112, AE HUREN, data dir ./huren-data, embedded stores."""
    s = Settings.load(env={})
    assert (s.port, s.dimse_port, s.ae_title) == (8080, 11112, "HUREN")
    assert s.data_dir == Path("huren-data")
    assert s.database_url is None and s.redis_url is None


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    """Each source overrides the one before it."""
    cfg = tmp_path / "huren.toml"
    cfg.write_text('[huren]\nport = 9000\nfederation_deadline = 1.5\nlog_level = "DEBUG"\n')
    s = Settings.load(
        config_file=cfg,
        env={"HUREN_PORT": "9100", "HUREN_DATA_DIR": "/srv/huren"},
        overrides={"port": 9200, "host": None},
    )
    assert s.port == 9200
    assert s.federation_deadline == 1.5
    assert s.log_level == "DEBUG"
    assert s.data_dir == Path("/srv/huren")
    assert s.host == "127.0.0.1"  # a None override leaves the default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port = 'eighty'", "expects int"),
        ("colour = 'red'", r"unknown settings \['colour'\]"),
        ("port = ", "not valid TOML"),
    ],
)
def test_bad_config_file_is_refused_with_the_setting_named(
    tmp_path: Path, text: str, message: str
) -> None:
    """A bad file names the setting or the syntax problem."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message):
        Settings.load(config_file=cfg, env={})


def test_bad_env_value_is_refused() -> None:
    """HUREN_PORT that is not a number is a ConfigError, not a crash later."""
    with pytest.raises(ConfigError, match="'port' expects int"):
        Settings.load(env={"HUREN_PORT": "x"})


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        Settings.load(config_file=Path("/nonexistent/huren.toml"), env={})


def test_redact_masks_national_ids_and_person_names() -> None:
    """18-digit IDs (with X), 15-digit IDs and DICOM PN values are masked."""
    text = "patient 32040219800101901X and 320402800101901 named WANG^WEI or 王^伟 at F001"
    out = redact(text)
    assert "32040219800101901X" not in out and "320402800101901" not in out
    assert "WANG^WEI" not in out and "王^伟" not in out
    assert "F001" in out


def test_redact_masks_bearer_tokens() -> None:
    """A token in a log (aiohttp logs a malformed request's headers) is a usable credential."""
    jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJkciJ9.c2lnbmF0dXJl-_x"
    for text in (f"Authorization: Bearer {jwt}", f"token={jwt} done", "Bearer opaque-123"):
        out = redact(text)
        assert jwt not in out and "opaque-123" not in out and "[token]" in out, out
    assert redact("no secrets at F001") == "no secrets at F001"


def test_log_records_are_json_and_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """The JSON formatter carries extras; the filter scrubs message, args and extras."""
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("huren.test")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning(
            "lookup for %s", "32040219800101901X", extra={"facility": "F001", "who": "LI^NA"}
        )
    finally:
        log.removeHandler(handler)
    line = json.loads(capsys.readouterr().err.strip())
    assert line["msg"] == "lookup for [id]"
    assert line["facility"] == "F001" and line["who"] == "[name]"
    assert line["level"] == "warning"
