"""The saga store: SQL through SQLAlchemy, the source of truth. Knows nothing of Celery.

protocol: what a store does (the engine, client and tools depend on it); factory.open_store: the
store a URL names; sql: the SQL base class; sqlite, postgres: each database's own ways; cache: the
sagas a store remembers; rows and schema: tables and conversions; migrate: Alembic.
"""
