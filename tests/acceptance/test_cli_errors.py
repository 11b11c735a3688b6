"""The `sagaflow` command fails in one line with a consistent exit code, never a traceback:
deep JSON, bad URLs, files it cannot read, a store or broker that is down or answers garbage,
a store without tables, and anything unexpected. Run for real in subprocesses; under `--json`
the error is JSON on stdout."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagaflow.store.factory import open_store
from tests.acceptance.test_cli import (
    assert_one_line_error,
    cli_env,
    describe,
    isolated_env,
    sagaflow,
)
from tests.conftest import ROOT, create_postgres_database, drop_postgres_database, poll

DOWN_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1
DOWN_STORE = "postgresql+psycopg://u@127.0.0.1:1/x"


def json_error(result: subprocess.CompletedProcess[str], code: int) -> dict[str, Any]:
    """The `{"error": {"type", "message"}, "code"}` a command printed under --json, and nothing
    else; `code` is the exit code."""
    assert result.returncode == code, describe(result)
    assert "Traceback" not in result.stdout + result.stderr, describe(result)
    assert result.stderr == "", describe(result)
    try:
        printed = json.loads(result.stdout)
        error: dict[str, Any] = printed["error"]
    except (ValueError, KeyError):
        pytest.fail(f"not a JSON error: {describe(result)}")
    assert set(printed) == {"error", "code"} and printed["code"] == code, describe(result)
    assert set(error) == {"type", "message"}, describe(result)
    return error


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An empty embedded home whose broker is down: a command that got as far as sending
    anything would exit 4."""
    return isolated_env(tmp_path / "home", SAGAFLOW_BROKER_URL=DOWN_BROKER)


# -- deep JSON --------------------------------------------------------------------------------

DEEP = {
    "arrays-10000": "[" * 10_000 + "]" * 10_000,
    "objects-10000": '{"a":' * 10_000 + "1" + "}" * 10_000,
    "arrays-70": '{"a":' + "[" * 70 + "]" * 70 + "}",  # within the decoder's reach
}


@pytest.mark.parametrize("source", ["--data", "--data-file", "stdin"])
@pytest.mark.parametrize("deep", list(DEEP))
def test_deep_input_is_refused_with_the_reason(
    env: dict[str, str], tmp_path: Path, source: str, deep: str
) -> None:
    text = DEEP[deep]
    stdin = None
    if source == "--data":
        args = ["--data", text]
    elif source == "--data-file":
        (tmp_path / "deep.json").write_text(text)
        args = ["--data-file", str(tmp_path / "deep.json")]
    else:
        args, stdin = ["--data-file", "-"], text
    result = sagaflow("start", "trip", *args, env=env, stdin=stdin)
    line = assert_one_line_error(result, 2)  # an option's value: bad usage
    option = "--data" if source == "--data" else "--data-file"
    assert line.startswith(f"error: {option} refused: nested more than 64 levels deep")

    as_json = sagaflow("start", "trip", *args, "--json", env=env, stdin=stdin)
    error = json_error(as_json, 2)
    assert error == {"type": "UsageError", "message": line.removeprefix("error: ")}


def test_deep_resolve_result_is_bad_usage(env: dict[str, str]) -> None:
    result = sagaflow(
        "resolve",
        "some-id",
        "s1",
        "--applied",
        "--reason",
        "seen",
        "--result",
        DEEP["arrays-10000"],
        env=env,
    )
    line = assert_one_line_error(result, 2)
    assert "--result refused: nested more than 64 levels deep" in line


# -- bad URLs ---------------------------------------------------------------------------------

BAD_URLS = [
    ("--database-url", "not-a-url://x:pw@", "not a SQLAlchemy URL"),
    ("--database-url", "nosuch://h/db", "no SQLAlchemy dialect named 'nosuch'"),
    ("--database-url", "postgresql+psycopg://u@h:port/x", "not a SQLAlchemy URL"),
    ("--database-url", "postgresql+nosuchdriver://u@h/x", "no SQLAlchemy dialect"),
    ("--broker-url", "nosuch://h", "no broker transport named 'nosuch'"),
    ("--broker-url", "redis://h:port/0", "Port could not be cast to integer"),
    ("--broker-url", "not a url", "not a URL"),
]


@pytest.mark.parametrize(("option", "url", "reason"), BAD_URLS, ids=[u for _, u, _ in BAD_URLS])
def test_a_malformed_url_is_bad_usage(
    env: dict[str, str], option: str, url: str, reason: str
) -> None:
    line = assert_one_line_error(sagaflow(option, url, "status", "some-id", env=env), 2)
    assert reason in line and option in line
    assert "pw" not in line
    variable = "SAGAFLOW_DATABASE_URL" if option == "--database-url" else "SAGAFLOW_BROKER_URL"
    from_env = sagaflow("status", "some-id", env={**env, variable: url})
    assert assert_one_line_error(from_env, 2) == line
    error = json_error(sagaflow(option, url, "status", "some-id", "--json", env=env), 2)
    assert error["type"] == "UsageError" and reason in error["message"]


@pytest.mark.parametrize(
    "command",
    [
        ["start", "trip"],
        ["list"],
        ["history", "x"],
        ["cancel", "x"],
        ["recover"],
        ["db", "upgrade"],
        ["dashboard"],
        ["worker"],
        ["stack"],
        ["demo"],
    ],
    ids=lambda c: " ".join(c),
)
def test_every_command_refuses_a_malformed_url(
    env: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    result = sagaflow("--database-url", "not-a-url://x:pw@", *command, env=env)
    assert "not a SQLAlchemy URL" in assert_one_line_error(result, 2)
    assert not (tmp_path / "home").exists()  # refused before anything was created


# -- files it cannot read ---------------------------------------------------------------------


def without_file_access_override() -> None:
    """In the child: give up the capabilities that let root read any file, so that a file's
    mode applies to it (run as another user, this changes nothing)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def unreadable(kind: str, tmp_path: Path) -> str:
    path = tmp_path / "input.json"
    if kind == "missing":
        return str(tmp_path / "no-such.json")
    if kind == "a directory":
        return str(tmp_path)
    if kind == "no permission":
        path.write_text("{}")
        path.chmod(0)
    elif kind == "not UTF-8":
        path.write_bytes(b'{"name": "caf\xe9"}')
    elif kind == "too large":  # SAGAFLOW_MAX_INPUT_BYTES=10 below: 40 bytes of text at most
        path.write_text('{"a": "' + "x" * 100 + '"}')
    return str(path)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("missing", "No such file or directory"),
        ("a directory", "Is a directory"),
        ("no permission", "Permission denied"),
        ("not UTF-8", "is not UTF-8 text (byte 13: invalid continuation byte)"),
        ("too large", "is over 40 bytes"),
    ],
)
def test_an_unreadable_data_file_is_bad_usage(
    env: dict[str, str], tmp_path: Path, kind: str, reason: str
) -> None:
    path = unreadable(kind, tmp_path)
    run_env = cli_env({**env, "SAGAFLOW_MAX_INPUT_BYTES": "10"})
    for extra in ([], ["--json"]):
        result = subprocess.run(
            [sys.executable, "-m", "sagaflow", "start", "trip", "--data-file", path, *extra],
            env=run_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=without_file_access_override,
        )
        if extra:
            error = json_error(result, 2)
            assert error["type"] == "UsageError" and reason in error["message"]
        else:
            line = assert_one_line_error(result, 2)
            assert "'--data-file'" in line and reason in line


# -- a store or broker that is down, answers garbage, or has no tables ------------------------


@pytest.fixture
def garbage_port() -> Iterator[int]:
    """A TCP server that answers anything with bytes no database or broker speaks."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)  # so that the loop sees `stop`
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 418 I'm a teapot\r\n\x00\xff\xfe\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql+psycopg://u:pw@127.0.0.1:{port}/x", "unavailable"),
        (DOWN_STORE, "unavailable"),
        ("sqlite:///{garbage}", ": file is not a database"),
    ],
    ids=["garbage-server", "nothing-listens", "garbage-sqlite-file"],
)
@pytest.mark.parametrize(
    "command", [["status", "x"], ["list", "--json"], ["db", "upgrade"]], ids=" ".join
)
def test_a_store_that_is_down_or_answers_garbage_exits_4(
    env: dict[str, str],
    tmp_path: Path,
    garbage_port: int,
    url: str,
    reason: str,
    command: list[str],
) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(4096))
    url = url.format(port=garbage_port, garbage=garbage)
    result = sagaflow("--database-url", url, *command, env=env, timeout=60)
    if "--json" in command:
        error = json_error(result, 4)
        assert error["type"] == "StoreUnavailable" and reason in error["message"]
    else:
        assert reason in assert_one_line_error(result, 4)


def test_a_postgres_store_without_tables_says_to_run_db_upgrade(env: dict[str, str]) -> None:
    url = create_postgres_database()
    try:
        line = assert_one_line_error(sagaflow("--database-url", url, "status", "x", env=env), 4)
        assert "has no sagaflow tables: run `sagaflow db upgrade`" in line
        error = json_error(sagaflow("--database-url", url, "list", "--json", env=env), 4)
        assert error["type"] == "StoreNotMigrated" and "sagaflow db upgrade" in error["message"]
    finally:
        drop_postgres_database(url)


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_a_broker_that_answers_garbage_exits_4(
    env: dict[str, str], garbage_port: int, scheme: str
) -> None:
    broker = f"{scheme}://u:pw@127.0.0.1:{garbage_port}/0"
    env = {**env, "SAGAFLOW_DATABASE_URL": DOWN_STORE}
    # The store is down: the start is kept in the producer's outbox, and the broker's garbage
    # is one warning line, without its password.
    kept = sagaflow("--broker-url", broker, "start", "trip", env=env)
    assert kept.returncode == 0, describe(kept)
    assert "Traceback" not in kept.stdout + kept.stderr and "pw" not in kept.stderr
    assert "kept in the outbox but its start could not be sent" in kept.stderr, describe(kept)
    # Nothing can keep it when the outbox cannot be written either: one line, exit 4.
    nowhere = {**env, "SAGAFLOW_OUTBOX_PATH": "/dev/null/outbox.db"}
    line = assert_one_line_error(sagaflow("--broker-url", broker, "start", "trip", env=nowhere), 4)
    assert "pw" not in line
    as_json = sagaflow("--broker-url", broker, "start", "trip", "--json", env=nowhere)
    assert json_error(as_json, 4)["type"] == "OutboxUnavailable"


def test_recover_with_the_broker_down_exits_4(env: dict[str, str], garbage_port: int) -> None:
    env = {**env, "SAGAFLOW_DEFINITIONS": "tests.sagas"}
    assert sagaflow("db", "upgrade", env=env).returncode == 0
    # Recorded though its start message could not be sent: the sweep has it to start.
    started = sagaflow("start", "trip", env=env)
    assert started.returncode == 0, describe(started)
    line = assert_one_line_error(sagaflow("recover", "--older-than", "0", env=env), 4)
    assert line.startswith(f"error: broker {DOWN_BROKER} unavailable: "), line
    garbage = f"redis://127.0.0.1:{garbage_port}/0"
    as_json = sagaflow("--broker-url", garbage, "recover", "--older-than", "0", "--json", env=env)
    error = json_error(as_json, 4)
    assert error["type"] == "BrokerUnavailable" and "Protocol Error" in error["message"]


@pytest.mark.parametrize("command", [["stack", "--no-dashboard"], ["demo"]], ids=" ".join)
def test_stack_and_demo_say_at_once_that_the_broker_is_down(
    env: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    env = {k: v for k, v in env.items() if k != "FLOWER_BASIC_AUTH"}
    result = sagaflow(*command, env=env, timeout=60)
    assert result.returncode == 4, describe(result)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: broker {DOWN_BROKER} unavailable: Error 111 connecting to 127.0.0.1:1. "
        "Connection refused."
    ], describe(result)


# -- bad usage, interrupts, and the last resort -----------------------------------------------


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["list", "--limit", "0"], "0 is not in the range 1<=x<=10000. (see 'sagaflow list -h')"),
        (["no-such-command"], "No such command 'no-such-command'"),
        (["status"], "Missing argument 'SAGA_ID'"),
        (["history", "x", "--no-such-option"], "No such option"),
        # Numbers that would wait forever or overflow a conversion
        (["recover", "--older-than", "nan"], "'nan' is not a finite number of seconds"),
        (["recover", "--older-than", "1e400"], "'1e400' is not a finite number of seconds"),
        (["start", "trip", "--wait", "--timeout", "inf"], "'inf' is not a finite number"),
        (["start", "trip", "--wait", "--timeout", "-5"], "'-5' is not a finite number"),
        (["list", "--since", "99999999d"], "Invalid value for '--since'"),
        (["list", "--offset", str(2**64)], "is not in the range 0<=x<=9223372036854775807"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(
    env: dict[str, str], args: list[str], reason: str
) -> None:
    assert reason in assert_one_line_error(sagaflow(*args, env=env, timeout=60), 2)
    if args[0] in ("list", "history", "recover"):
        error = json_error(sagaflow(*args, "--json", env=env), 2)
        assert error["type"] == "UsageError" and reason in error["message"]


def test_the_dashboard_on_a_port_in_use_says_so(env: dict[str, str]) -> None:
    assert sagaflow("db", "upgrade", env=env).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = sagaflow("dashboard", "--port", str(port), env=env, timeout=60)
    assert result.returncode == 1, describe(result)
    assert "Traceback" not in result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot serve on 127.0.0.1:{port}: "), last
    assert "Address already in use" in last


def test_an_unexpected_error_is_one_line_with_a_hint(env: dict[str, str], tmp_path: Path) -> None:
    # A Celery config module that raises: nothing in sagaflow expects that.
    (tmp_path / "broken_config.py").write_text("raise RuntimeError('config module is broken')\n")
    env = {**env, "SAGAFLOW_CELERY_CONFIG": "broken_config", "PYTHONPATH": str(tmp_path)}
    line = assert_one_line_error(sagaflow("recover", env=env), 1)
    assert line == (
        "error: unexpected RuntimeError: config module is broken "
        "(run with SAGAFLOW_DEBUG=1 for the traceback)"
    )
    error = json_error(sagaflow("recover", "--json", env=env), 1)
    assert error == {"type": "RuntimeError", "message": line.removeprefix("error: ")}

    debug = sagaflow("recover", env={**env, "SAGAFLOW_DEBUG": "1"})
    assert debug.returncode == 1, describe(debug)
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == line


def test_ctrl_c_while_waiting_exits_130_in_one_line(tmp_path: Path) -> None:
    env = cli_env(isolated_env(tmp_path / "home"))  # embedded broker: the start is sent
    assert sagaflow("db", "upgrade", env=env).returncode == 0
    waiting = subprocess.Popen(
        [sys.executable, "-m", "sagaflow", "start", "trip", "--id", "waits", "--wait"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = open_store(f"sqlite:///{tmp_path / 'home' / 'sagaflow.db'}")
    try:
        poll(lambda: store.load("waits"), 60, lambda: "the start was never recorded")
        # Ctrl-C, pressed again (as a person would) if the first one landed where the start was
        # still being handed to the broker; the exit must still be 130 and one line.
        for _ in range(3):
            waiting.send_signal(signal.SIGINT)
            try:
                stdout, stderr = waiting.communicate(timeout=20)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            stdout, stderr = waiting.communicate(timeout=30)
    finally:
        store.dispose()
        if waiting.poll() is None:
            waiting.kill()
    result = subprocess.CompletedProcess(waiting.args, waiting.returncode, stdout, stderr)
    assert assert_one_line_error(result, 130) == "error: interrupted"


def test_a_ctrl_c_python_can_only_ignore_prints_no_traceback() -> None:
    """Where Ctrl-C lands in a callback Python runs itself (a module lock released during an
    import), Python prints "Exception ignored in" and a traceback: the CLI keeps quiet, and
    still lets every other ignored exception through."""
    script = (
        "import gc\n"
        "from sagaflow.ops.cli_errors import quiet_interrupts\n"
        "quiet_interrupts()\n"
        "class Interrupted:\n"
        "    def __del__(self): raise KeyboardInterrupt\n"
        "class Broken:\n"
        "    def __del__(self): raise ValueError('still shown')\n"
        "Interrupted(); Broken(); gc.collect()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, describe(done)
    assert "KeyboardInterrupt" not in done.stderr, describe(done)
    assert "ValueError: still shown" in done.stderr, describe(done)


def test_errors_are_printed_as_given_not_as_markup(env: dict[str, str]) -> None:
    line = assert_one_line_error(sagaflow("start", "trip", "--id", "[bold]x", env=env), 1)
    assert line.startswith("error: saga id '[bold]x' refused: "), line
