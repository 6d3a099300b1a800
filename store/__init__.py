"""The store (sqlmodel): what must outlive workflow retention.

* :mod:`store.models` — the tables;
* :mod:`store.db` — engine and sessions from ``DATABASE_URL``, ``migrate()``;
* :mod:`store.repository` — idempotent writes of snapshots and blobs, reads for the API;
* :mod:`contracts.snapshots` — ``PlanSnapshot`` and ``snapshot_of``: pure, safe to import in
  workflow code. Nothing is imported here, so importing it stays free of SQLAlchemy.
"""
