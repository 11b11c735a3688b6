"""The operator's surface: the CLI, the dashboard and its API, metrics, quarantine tools."""
