"""The demo and the local stack: processes started on this machine for trying sagaflow."""
