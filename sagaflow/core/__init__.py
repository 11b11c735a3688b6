"""The pure core: saga definitions, records, the state machine and the wire protocol.

Standard library and sagaflow.errors only: no I/O, no clock, no Celery, no SQL.
"""
