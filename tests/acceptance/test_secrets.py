"""No password is ever printed: passwords planted in the store's URL, the broker's and the basic
auth settings, then every output of the demo, the stack, the CLI and the workers' logs is
searched for them. Also the masking function itself, on URLs no parser accepts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from sagaflow.urls import MASK, mask_url, scrub, secrets_of
from tests.acceptance.test_cli import cli_env, describe, isolated_env, sagaflow
from tests.acceptance.test_stack import ORDER, StackProcess
from tests.conftest import (
    ROOT,
    create_postgres_database,
    drop_postgres_database,
    free_port,
    redis_url,
    require_redis,
)

REDIS_DB = 14  # this file's own database on the run's Redis


@dataclass
class Planted:
    """An environment whose URLs and basic-auth settings carry passwords of their own."""

    home: Path
    database_url: str  # with its password
    broker_url: str
    server: str  # the broker's host:port/db
    secrets: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)  # where outputs were read, for the report

    def check(self, text: str, where: str) -> None:
        self.seen.append(where)
        for secret in self.secrets:
            assert secret not in text, f"{where} prints the password {secret!r}:\n{text}"

    def check_logs(self, folder: Path) -> dict[str, str]:
        logs = {path.name: path.read_text(errors="replace") for path in folder.glob("*.log")}
        assert logs, f"no logs in {folder}"
        for name, text in logs.items():
            self.check(text, str(folder / name))
        return logs


def secret(kind: str) -> str:
    return f"{kind}-pw-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def planted(tmp_path: Path) -> Iterator[Planted]:
    """PostgreSQL (trust auth takes any password) and Redis (its default user takes any
    password) reached with passwords that must never show."""
    server = redis_url(REDIS_DB).removeprefix("redis://")
    broker_url = f"redis://default:{secret('broker')}@{server}"
    require_redis(broker_url)
    redis.Redis.from_url(broker_url).flushdb()
    bare = create_postgres_database("sagaflow_secrets")
    database_url = sa.engine.make_url(bare).set(password=secret("store")).render_as_string(False)
    results_url = f"redis://default:{secret('results')}@{server}"
    secrets = (
        *secrets_of(database_url),
        *secrets_of(broker_url),
        *secrets_of(results_url),
        secret("flower"),
        secret("dashboard"),
    )
    env = isolated_env(
        tmp_path / "home",
        SAGAFLOW_DATABASE_URL=database_url,
        SAGAFLOW_BROKER_URL=broker_url,
        SAGAFLOW_RESULT_BACKEND=results_url,
        SAGAFLOW_RECOVER_INTERVAL="1",
        FLOWER_BASIC_AUTH=f"ops:{secrets[-2]}",
        SAGAFLOW_DASHBOARD_AUTH=f"ops:{secrets[-1]}",
    )
    try:
        yield Planted(tmp_path / "home", database_url, broker_url, server, secrets, env)
    finally:
        drop_postgres_database(bare)


def run_cli(planted: Planted, *args: str) -> subprocess.CompletedProcess[str]:
    result = sagaflow(*args, env=planted.env)
    planted.check(result.stdout + result.stderr, f"sagaflow {' '.join(args)}")
    return result


def test_demo_on_redis_and_postgres_prints_no_password(planted: Planted, tmp_path: Path) -> None:
    home = tmp_path / "demo"
    result = run_cli(planted, "demo", "--sagas", "8", "--home", str(home))
    assert result.returncode == 0, describe(result)
    text = " ".join(result.stdout.split())
    assert "every failed order was compensated" in text
    # The URLs are shown, masked.
    assert "store: postgresql+psycopg://postgres:***@127.0.0.1:5432/" in text, text
    assert f"default:***@{planted.server}" in text, text
    logs = planted.check_logs(home / "logs")
    assert set(logs) == {"orchestrator.log", "inventory.log", "payments.log", "shipping.log"}
    assert (
        "sagaflow orchestrator ready: store SagaStore('postgresql+psycopg://postgres:***@"
        in (logs["orchestrator.log"])
    )
    for name, log in logs.items():  # Celery's banner, which masks with two stars
        # sagaflow's apps name their transport class (broker_transport), shown as its scheme.
        transport = "sagaflow.messaging.transport:RedisTransport"
        assert f"transport:   {transport}://default:**@{planted.server}" in log, name
        assert f"results:     redis://default:**@{planted.server}" in log, name


def test_stack_and_cli_commands_print_no_password(planted: Planted, tmp_path: Path) -> None:
    flower_port, dashboard_port = free_port(), free_port()
    args = ["-c", "1", f"--flower-port={flower_port}", f"--dashboard-port={dashboard_port}"]
    stack = StackProcess(args, planted.env, tmp_path / "stack.out")
    try:
        stack.wait_ready()
        started = run_cli(planted, "start", "order", "--data", json.dumps(ORDER), "--wait")
        assert started.returncode == 0, describe(started)
        listed = run_cli(planted, "list", "--json")
        assert listed.returncode == 0, describe(listed)
        saga_id = json.loads(listed.stdout)[0]["saga_id"]
        for command in (
            ["status", saga_id],
            ["status", saga_id, "--json"],
            ["history", saga_id],
            ["list"],
            ["recover", "--older-than", "600"],
            ["db", "upgrade"],
        ):
            result = run_cli(planted, *command)
            assert result.returncode == 0, describe(result)
        stack.process.send_signal(signal.SIGTERM)
        assert stack.wait_exit() == 0, stack.output()
    finally:
        stack.close()
    output = stack.output()
    planted.check(output, "sagaflow stack")
    assert f"broker: redis://default:***@{planted.server}" in output, output
    # `python -m workers.db`'s line, passed through
    assert "example data in postgresql+psycopg://postgres:***@127.0.0.1" in output, output
    logs = planted.check_logs(planted.home / "stack-logs")
    assert {"orchestrator.log", "beat.log", "flower.log", "dashboard.log"} <= set(logs)
    assert (
        "sagaflow orchestrator ready: store SagaStore('postgresql+psycopg://postgres:***@"
        in (logs["orchestrator.log"])
    )
    assert "postgresql+psycopg://postgres:***@" in logs["dashboard.log"]

    alone = workers_db(planted.env)  # as compose's `migrate` runs it, without the stack
    planted.check(alone.stdout + alone.stderr, "python -m workers.db")
    assert alone.returncode == 0, describe(alone)
    assert alone.stdout.startswith("example data in postgresql+psycopg://postgres:***@127.0.0.1")


def workers_db(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.db"],
        env=cli_env(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_failures_print_no_password(planted: Planted, tmp_path: Path) -> None:
    store_secret, broker_secret = planted.secrets[:2]
    down_store = f"postgresql+psycopg://postgres:{store_secret}@127.0.0.1:1/x"
    down_broker = f"redis://default:{broker_secret}@127.0.0.1:1/0"
    flower = f"--flower-port={free_port()}"
    for args, code, shows_url in (
        (["--database-url", down_store, "status", "some-id"], 4, True),
        (["--database-url", down_store, "status", "some-id", "--json"], 4, True),
        ([f"--database-url={down_store}", "history", "some-id"], 4, True),
        (["--database-url", down_store, "db", "upgrade"], 4, True),
        (["--database-url", down_store, "dashboard"], 4, True),
        (["--database-url", f"not-a-url://postgres:{store_secret}@", "list"], 2, True),
        (["--database-url", f"postgresql+psycopg://u:{store_secret}@h:port/x", "list"], 2, True),
        (["--broker-url", f"nosuch://u:{broker_secret}@h", "start", "order"], 2, True),
        (["--broker-url", f"redis://:{broker_secret}@h:x/0", "start", "order", "--json"], 2, True),
        # The store and the broker are down: the start is kept in the outbox, and the warnings
        # that say so name their errors, not their passwords.
        (["--database-url", down_store, "--broker-url", down_broker, "start", "order"], 0, True),
        # A store without tables refuses the start, with the broker's password nowhere.
        (["--broker-url", down_broker, "start", "order"], 4, False),
        (["--broker-url", down_broker, "stack", flower, "--no-dashboard"], 4, True),
        (["--database-url", down_store, "stack", flower, "--no-dashboard"], 4, True),
        (["--database-url", down_store, "demo", "--home", str(tmp_path / "demo")], 4, True),
    ):
        result = sagaflow(*args, env={**planted.env, "SAGAFLOW_DEBUG": "1"})
        output = result.stdout + result.stderr
        planted.check(output, f"sagaflow {' '.join(args)}")
        assert result.returncode == code, describe(result)
        assert not shows_url or "***@" in output, describe(result)

    down = workers_db({**planted.env, "WORKERS_DATABASE_URL": down_store})
    planted.check(down.stdout + down.stderr, "python -m workers.db, its database down")
    assert down.returncode == 1, describe(down)
    assert down.stderr.count("\n") == 1, describe(down)
    assert "cannot prepare the example data in postgresql+psycopg://postgres:***@127.0.0.1:1/x" in (
        down.stderr
    )


def test_warnings_a_command_logs_are_scrubbed(planted: Planted) -> None:
    """Libraries' warnings reach the terminal through logging's last resort: masked too."""
    store_secret = planted.secrets[0]
    script = (
        "import logging, sys\n"
        "from sagaflow.ops.cli_errors import scrub_warnings\n"
        "scrub_warnings(sys.argv[1:])\n"
        "logging.getLogger('driver').warning('cannot use %s (%s)', sys.argv[2], sys.argv[3])\n"
    )
    given = ["--database-url", planted.database_url, store_secret]
    done = subprocess.run(
        [sys.executable, "-c", script, *given],
        env=cli_env(planted.env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, describe(done)
    planted.check(done.stderr, "a warning logged by the CLI")
    assert done.stderr.startswith("cannot use postgresql+psycopg://postgres:***@"), describe(done)
    assert done.stderr.rstrip().endswith("(***)"), describe(done)


# -- the masking function ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://u:pw@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://default:pw@h:6380/1?ssl_cert_reqs=none", None),
        ("amqp://user:pw@host:5672//", "amqp://user:***@host:5672//"),
        (
            "sentinel://:a@h1:26379;sentinel://:b@h2:26379",
            "sentinel://:***@h1:26379;sentinel://:***@h2:26379",
        ),
        (
            "redis+socket:///run/redis.sock?password=pw&db=1",
            "redis+socket:///run/redis.sock?password=***&db=1",
        ),
        ("postgresql://u@h/db?sslpassword=pw", "postgresql://u@h/db?sslpassword=***"),
        ("not-a-url://x:pw@", "not-a-url://x:***@"),
        ("postgresql://u:p@ss/w#rd@h/db", "postgresql://u:***@h/db"),  # unencoded, all hidden
        ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
        ("u:pw@h/db", "u:***@h/db"),  # its scheme forgotten
        ("sqlite:///relative/a:b@c.db", "sqlite:///relative/a:b@c.db"),  # a path, not a login
        ("filesystem://", "filesystem://"),
        ("redis://u@h:6379/0", "redis://u@h:6379/0"),
    ],
)
def test_mask_url(url: str, masked: str | None) -> None:
    expected = masked or url.replace(":pw@", f":{MASK}@")
    assert mask_url(url) == expected


PASSWORD = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Zs", "Zl", "Zp"]),
    min_size=1,
    max_size=30,
).filter(lambda pw: "://" not in pw and MASK[0] not in pw)


@given(
    scheme=st.sampled_from(["postgresql+psycopg", "redis", "amqp", "sqla+mysql", "x-y.z"]),
    user=st.from_regex(r"[a-z0-9_]{0,8}", fullmatch=True),
    password=PASSWORD,
)
def test_mask_url_hides_any_password(scheme: str, user: str, password: str) -> None:
    url = f"{scheme}://{user}:{password}@db.example:5432/name"
    masked = f"{scheme}://{user}:{MASK}@db.example:5432/name"
    assert mask_url(url) == masked
    assert password in secrets_of(url)
    scrubbed = scrub(f"cannot reach '{url}' (timeout); {password} was refused", [url])
    if len(password) >= 4:  # shorter ones are not searched for in free text
        assert password not in scrubbed
    else:
        assert f"'{masked}'" in scrubbed
