"""Where the example business lives: the repository's workers/, installed as sagaflow.example
(so that the demo and the stack run from any folder, and nothing else imports it)."""

from __future__ import annotations

EXAMPLE_PACKAGE = "sagaflow.example"
SERVICES = ("inventory", "payments", "shipping")
