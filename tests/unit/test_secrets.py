"""Credentials live in SecretStr settings: handed to the clients, never printed or logged."""

from __future__ import annotations

import logging

import pytest

from infra.settings import ClickHouseSettings, GatewaySettings, KafkaSettings, RegistrySettings

SECRET = "s3cr3t-Value-42"


def test_passwords_reach_the_clients_but_not_reprs_dumps_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    kafka = KafkaSettings(
        security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u", sasl_password=SECRET
    )
    registry = RegistrySettings(username="u", password=SECRET)
    clickhouse = ClickHouseSettings(password=SECRET)
    gateway = GatewaySettings(api_keys=SECRET, admin_key=SECRET + "-admin")
    assert kafka.client_config()["sasl.password"] == SECRET
    assert registry.client_config()["basic.auth.user.info"] == f"u:{SECRET}"
    assert clickhouse.password.get_secret_value() == SECRET and gateway.api_key_list() == [SECRET]
    with caplog.at_level(logging.DEBUG):
        for s in (kafka, registry, clickhouse, gateway):
            logging.getLogger("rftloop.test").info("settings: %s %r", s, s)
            shown = f"{s} {s!r} {s.model_dump()} {s.model_dump_json()}"
            assert SECRET not in shown, type(s).__name__
    assert SECRET not in caplog.text
