"""Settings from the environment, the Celery configuration they give, and config modules."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path
from types import ModuleType

import pytest

from sagaflow.config import Settings, celery_settings
from sagaflow.core.definitions import Registry
from sagaflow.errors import ConfigurationError
from sagaflow.messaging.app import CONFIG_MODULE_ENV, create_app
from tests.conftest import ROOT

# -- Settings ---------------------------------------------------------------------------------


def test_defaults_are_embedded_under_dot_sagaflow() -> None:
    settings = Settings.from_env({})
    assert settings.home == Path(".sagaflow")
    assert settings.broker_url == "filesystem://"
    assert settings.is_filesystem_broker
    assert settings.broker_folder == Path(".sagaflow") / "broker"
    assert settings.database_url == "sqlite:///.sagaflow/sagaflow.db"
    assert settings.queue == "sagaflow"
    assert settings.events_exchange == "sagaflow.events"
    assert settings.definitions == ()
    assert settings.result_backend is None
    assert settings.max_input_bytes == 1_000_000


def test_the_database_follows_the_home() -> None:
    settings = Settings.from_env({"SAGAFLOW_HOME": "/srv/sagas"})
    assert settings.database_url == "sqlite:////srv/sagas/sagaflow.db"
    assert settings.broker_folder == Path("/srv/sagas/broker")


def test_environment_is_parsed() -> None:
    settings = Settings.from_env(
        {
            "SAGAFLOW_HOME": "/tmp/x",
            "SAGAFLOW_BROKER_URL": "redis://r:6379/2",
            "SAGAFLOW_DATABASE_URL": "postgresql+psycopg://db/sagas",
            "SAGAFLOW_RESULT_BACKEND": "redis://r:6379/3",
            "SAGAFLOW_QUEUE": "sagas",
            "SAGAFLOW_EVENTS_EXCHANGE": "ev",
            "SAGAFLOW_DEFINITIONS": " app.sagas, other.defs ,,",
            "SAGAFLOW_MAX_INPUT_BYTES": "2048",
        }
    )
    assert settings.home == Path("/tmp/x")
    assert settings.broker_url == "redis://r:6379/2"
    assert not settings.is_filesystem_broker
    assert settings.database_url == "postgresql+psycopg://db/sagas"
    assert settings.result_backend == "redis://r:6379/3"
    assert settings.queue == "sagas"
    assert settings.events_exchange == "ev"
    assert settings.definitions == ("app.sagas", "other.defs")
    assert settings.max_input_bytes == 2048


def test_empty_result_backend_means_none() -> None:
    assert Settings.from_env({"SAGAFLOW_RESULT_BACKEND": ""}).result_backend is None


@pytest.mark.parametrize("value", ["lots", "1.5", ""])
def test_bad_max_input_bytes_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigurationError, match="SAGAFLOW_MAX_INPUT_BYTES must be an integer"):
        Settings.from_env({"SAGAFLOW_MAX_INPUT_BYTES": value})


def test_empty_queue_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="queue name must not be empty"):
        Settings.from_env({"SAGAFLOW_QUEUE": ""})


def test_overrides_win_over_the_environment_and_none_is_ignored() -> None:
    env = {"SAGAFLOW_QUEUE": "from-env", "SAGAFLOW_BROKER_URL": "redis://env/0"}
    settings = Settings.from_env(env, queue="explicit", broker_url=None)
    assert settings.queue == "explicit"
    assert settings.broker_url == "redis://env/0"
    assert settings.with_overrides(queue=None, max_input_bytes=5).queue == "explicit"
    assert settings.with_overrides(max_input_bytes=5).max_input_bytes == 5


@pytest.mark.parametrize(
    "settings",
    [
        Settings(),
        Settings(
            home=Path("/var/lib/sagas"),
            broker_url="redis://127.0.0.1:6379/4",
            database_url="postgresql+psycopg://u:p@db:5432/s",
            result_backend="redis://127.0.0.1:6379/5",
            queue="orchestrate",
            events_exchange="events",
            definitions=("a.b", "c.d"),
            max_input_bytes=4096,
            orchestrator_task_events=True,
        ),
    ],
    ids=["defaults", "everything-set"],
)
def test_to_env_round_trips(settings: Settings) -> None:
    env = settings.to_env()
    assert all(k.startswith("SAGAFLOW_") and isinstance(v, str) for k, v in env.items())
    assert Settings.from_env(env) == settings


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("true", True), ("0", False), ("off", False)]
)
def test_orchestrator_task_events_is_a_flag(value: str, expected: bool) -> None:
    env = {"SAGAFLOW_ORCHESTRATOR_TASK_EVENTS": value}
    assert Settings.from_env(env).orchestrator_task_events is expected


def test_a_bad_orchestrator_task_events_flag_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="SAGAFLOW_ORCHESTRATOR_TASK_EVENTS must be 1"):
        Settings.from_env({"SAGAFLOW_ORCHESTRATOR_TASK_EVENTS": "sometimes"})


def test_only_the_orchestrator_sends_no_task_events_unless_asked(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sagaflow.messaging.orchestrator_app import create_orchestrator_app
    from sagaflow.service.tasks import create_service_app

    monkeypatch.setenv(CONFIG_MODULE_ENV, "")
    registry = Registry()
    default = create_orchestrator_app(settings, registry=registry)
    assert default.conf.worker_send_task_events is False
    asked = settings.with_overrides(orchestrator_task_events=True)
    assert create_orchestrator_app(asked, registry=registry).conf.worker_send_task_events is True
    assert create_service_app("svc", settings).conf.worker_send_task_events is True


# -- Celery settings --------------------------------------------------------------------------


def test_celery_settings_are_json_only_and_at_least_once() -> None:
    conf = celery_settings(Settings(broker_url="redis://127.0.0.1:6379/0"))
    assert conf["accept_content"] == ["json"]
    assert conf["result_accept_content"] == ["json"]
    assert conf["task_serializer"] == "json"
    assert conf["result_serializer"] == "json"
    assert conf["event_serializer"] == "json"
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["worker_send_task_events"] is True
    assert conf["task_send_sent_event"] is False  # one message less per dispatch
    assert conf["task_default_queue"] == "sagaflow"
    assert conf["broker_url"] == "redis://127.0.0.1:6379/0"
    assert conf["broker_transport_options"]["visibility_timeout"] >= 3600
    assert conf["task_ignore_result"] is True and conf["result_backend"] is None


def test_celery_settings_keep_results_only_with_a_backend() -> None:
    conf = celery_settings(Settings(result_backend="redis://127.0.0.1:6379/1"))
    assert conf["result_backend"] == "redis://127.0.0.1:6379/1"
    assert conf["task_ignore_result"] is False


def test_filesystem_broker_uses_folders_under_home(tmp_path: Path) -> None:
    conf = celery_settings(Settings(home=tmp_path, queue="q1"))
    options = conf["broker_transport_options"]
    assert options["data_folder_in"] == options["data_folder_out"] == str(tmp_path / "broker")
    assert options["control_folder"] == str(tmp_path / "broker-control")
    assert conf["task_default_queue"] == "q1"


# -- create_app and Celery config modules -----------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        broker_url="redis://127.0.0.1:1/0",  # never connected to: apps are only configured
        database_url=f"sqlite:///{tmp_path / 'home' / 'sagaflow.db'}",
    )


def config_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, *, select: bool = True
) -> str:
    """Write a uniquely named config module importable from tmp_path; name it in the env."""
    name = f"celeryconfig_{uuid.uuid4().hex}"
    folder = tmp_path / "config"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(folder))
    if select:
        monkeypatch.setenv(CONFIG_MODULE_ENV, name)
    return name


def test_create_app_applies_the_json_only_settings(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_MODULE_ENV, "")  # no config module at all
    app = create_app("t", settings)
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_serializer == "json"
    assert app.conf.task_acks_late is True
    assert app.conf.broker_url == "redis://127.0.0.1:1/0"
    assert settings.home.is_dir()


@pytest.mark.parametrize(
    "setting",
    [
        "accept_content = ['json', 'pickle']",
        "accept_content = ('pickle',)",
        "accept_content = ['pickle']",
        "accept_content = 'pickle'",
        "accept_content = ['json', 'application/x-python-serialize']",
        "result_accept_content = ['pickle']",
        "task_serializer = 'pickle'",
        "result_serializer = 'pickle'",
    ],
)
def test_config_module_that_lets_pickle_in_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings, setting: str
) -> None:
    config_module(tmp_path, monkeypatch, f"{setting}\n")
    with pytest.raises(ConfigurationError, match="JSON only"):
        create_app("t", settings)


def test_config_module_settings_apply_but_not_its_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    config_module(
        tmp_path,
        monkeypatch,
        "import os\n"
        "worker_concurrency = 3\n"
        "task_time_limit = 120\n"
        "broker_url = 'redis://elsewhere:6379/9'\n"
        "result_backend = 'redis://elsewhere:6379/10'\n"
        "broker_transport_options = {'visibility_timeout': 1, 'confirm_publish': True}\n"
        "task_ignore_result = False\n"
        "_private = 1\n"
        "def helper():\n"
        "    return 1\n",
    )
    app = create_app("t", settings)
    assert app.conf.worker_concurrency == 3
    assert app.conf.task_time_limit == 120
    assert app.conf.broker_url == "redis://127.0.0.1:1/0"
    assert app.conf.result_backend is None
    # Transport options add to sagaflow's; the ones sagaflow sets stay its own.
    options = app.conf.broker_transport_options
    assert options == {"visibility_timeout": 3600, "confirm_publish": True}
    assert app.conf.task_ignore_result is True
    assert "helper" not in app.conf and "os" not in app.conf


def test_missing_config_module_named_in_the_environment_is_an_error(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_MODULE_ENV, f"no_such_config_{uuid.uuid4().hex}")
    with pytest.raises(ConfigurationError, match="cannot import Celery config module"):
        create_app("t", settings)


def test_config_module_with_a_missing_dependency_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    config_module(tmp_path, monkeypatch, "import no_such_dependency_for_sagaflow_tests\n")
    with pytest.raises(ConfigurationError, match="no_such_dependency_for_sagaflow_tests"):
        create_app("t", settings)


def load_repository_celeryconfig(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    for key in ("SAGAFLOW_BROKER_URL", "SAGAFLOW_DATABASE_URL", "SAGAFLOW_HOME"):
        monkeypatch.delenv(key, raising=False)
    spec = importlib.util.spec_from_file_location("repo_celeryconfig", ROOT / "celeryconfig.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_repository_celeryconfig_is_json_only_and_acks_late(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = load_repository_celeryconfig(monkeypatch)
    assert config.accept_content == ["json"]
    assert config.result_accept_content == ["json"]
    assert config.task_serializer == "json"
    assert config.result_serializer == "json"
    assert config.task_acks_late is True
    assert config.task_reject_on_worker_lost is True
    assert config.worker_prefetch_multiplier == 1
    assert config.worker_send_task_events is True


def test_repository_celeryconfig_is_accepted_by_create_app(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv(CONFIG_MODULE_ENV, "celeryconfig")
    app = create_app("t", settings)
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_acks_late is True
    assert app.conf.broker_url == settings.broker_url
