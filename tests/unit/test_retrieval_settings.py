"""searchr1.retrieval.settings: safe defaults (issue 24, item 6) and the bearer token's variable."""

from __future__ import annotations

import pytest

from searchr1.config import load_config, preset_names
from searchr1.errors import ConfigError
from searchr1.retrieval.settings import RetrieverConfig, ServerConfig, read_token
from searchr1.settings import Config


@pytest.mark.parametrize("name", preset_names())
def test_every_bundled_preset_binds_127_0_0_1(name):
    cfg = load_config(Config, name)
    assert cfg.server.host == "127.0.0.1"
    assert cfg.server.token == ""  # a preset never holds a token (nor its variable)


def test_defaults_are_local_and_bounded():
    s = ServerConfig()
    assert s.host == "127.0.0.1"
    assert (s.max_result_hits, s.max_queue_queries, s.queue_timeout_s) == (20_000, 8192, 30.0)
    assert s.queue_timeout_s == RetrieverConfig().timeout_s  # the server drops what its clients gave up on
    assert RetrieverConfig().wait_deadline_s == 600.0


def test_read_token(monkeypatch):
    assert read_token("", "server.token") == ""
    monkeypatch.setenv("MY_TOKEN", " abc ")
    assert read_token("MY_TOKEN", "server.token") == "abc"
    monkeypatch.setenv("MY_TOKEN", "")
    with pytest.raises(ConfigError, match="server.token=MY_TOKEN names an environment variable that is not set"):
        read_token("MY_TOKEN", "server.token")


@pytest.mark.parametrize("bad", [{"max_result_hits": 0}, {"max_queue_queries": 0}, {"queue_timeout_s": 0}])
def test_bad_server_limits(bad):
    with pytest.raises(ValueError):
        ServerConfig(**bad)


def test_negative_wait_deadline():
    with pytest.raises(ValueError):
        RetrieverConfig(wait_deadline_s=-1)
