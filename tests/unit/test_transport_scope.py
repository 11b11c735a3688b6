"""sagaflow's kombu transports apply to sagaflow's own apps; nothing else in the process changes."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import kombu.transport.redis as kombu_redis
import pytest
import tomllib
from celery import Celery
from kombu import Connection
from kombu.transport import TRANSPORT_ALIASES, filesystem
from packaging.requirements import Requirement
from packaging.version import Version

from sagaflow.config import Settings
from sagaflow.messaging import transport
from sagaflow.messaging.app import create_app

ROOT = Path(__file__).resolve().parents[2]
REDIS = "redis://127.0.0.1:1/0"  # never connected to: transports are chosen, not used


def test_a_sagaflow_app_leaves_kombus_aliases_and_other_apps_alone(tmp_path: Path) -> None:
    aliases = dict(TRANSPORT_ALIASES)
    ours = create_app("ours", Settings(home=tmp_path, broker_url=REDIS))
    assert aliases == TRANSPORT_ALIASES
    with ours.connection_for_write() as conn:
        assert type(conn.transport) is transport.RedisTransport
    with ours.connection_for_read() as conn:
        assert type(conn.transport) is transport.RedisTransport
    theirs = Celery("theirs", broker=REDIS, set_as_current=False)
    with theirs.connection_for_write() as conn:
        assert type(conn.transport) is kombu_redis.Transport
    with Connection(REDIS) as conn:
        assert type(conn.transport) is kombu_redis.Transport


def test_the_embedded_broker_uses_the_safe_filesystem_transport(tmp_path: Path) -> None:
    app = create_app("ours", Settings(home=tmp_path, broker_url="filesystem://"))
    with app.connection_for_write() as conn:
        assert type(conn.transport) is transport.Transport
    with Connection("filesystem://") as conn:
        assert type(conn.transport) is filesystem.Transport


@pytest.mark.parametrize("url", ["amqp://guest@127.0.0.1:1//", "sqla+sqlite:///x.db"])
def test_other_brokers_are_kombus_choice(url: str) -> None:
    assert transport.transport_for(url) is None


def test_rediss_keeps_kombus_tls_default_unless_configured(tmp_path: Path) -> None:
    app = create_app("ours", Settings(home=tmp_path, broker_url="rediss://127.0.0.1:1/0"))
    assert app.conf.broker_transport == transport.SAGAFLOW_TRANSPORTS["rediss"]
    assert app.conf.broker_use_ssl == {"ssl_cert_reqs": 0}  # ssl.CERT_NONE, as kombu's own


# kombu methods sagaflow's transports override: if one is renamed upstream, the override would
# silently stop applying.
OVERRIDDEN = {
    filesystem.Channel: (
        "_put",
        "_get",
        "queue_bind",
        "_queue_bind",
        "get_table",
        "queue_declare",
        "prepare_queue_arguments",
    ),
    kombu_redis.Channel: ("_create_client", "_connparams"),
}


def test_every_overridden_kombu_method_exists_upstream() -> None:
    for base, names in OVERRIDDEN.items():
        for name in names:
            assert callable(getattr(base, name, None)), f"kombu's {base.__name__} lost {name}"
    assert hasattr(filesystem.Channel, "_exchange_file")


def test_kombu_is_bounded_to_the_versions_tested() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (kombu,) = [Requirement(r) for r in project["dependencies"] if r.startswith("kombu")]
    installed = Version(importlib.metadata.version("kombu"))
    assert installed in kombu.specifier
    assert any(spec.operator == "<" for spec in kombu.specifier), "kombu needs an upper bound"
