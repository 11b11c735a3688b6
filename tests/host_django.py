"""A Django project's celery.py: settings read lazily from a settings module, namespace CELERY.

sagaflow's support is installed before the settings are read, as a project's celery.py often
does; what it must check is checked again when the worker starts.
"""

from __future__ import annotations

from celery import Celery

from sagaflow import install_service_support
from tests import host_django_settings
from tests.host_steps import register_steps

app = Celery("shop_django")
app.config_from_object("tests.host_django_settings", namespace="CELERY")
install_service_support(app, host_django_settings.SAGAFLOW_QUEUE)


register_steps(app, "hostd")
