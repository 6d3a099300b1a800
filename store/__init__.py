"""The store (sqlmodel): what must outlive workflow retention.

* :mod:`store.models` — the tables;
* :mod:`store.db` — engine and sessions from ``DATABASE_URL``, ``migrate()``;
* :mod:`store.recording` — a workflow's snapshot, written idempotently;
* :mod:`store.drafts` — plan documents kept before they run;
* :mod:`store.run_closing` — runs the workflow could not close itself, closed from outside;
* :mod:`store.blobs` — large step outputs, kept once by key;
* :mod:`store.reads` — plans, runs, steps, logs, audit and status, for the API;
* :mod:`store.upsert` — the INSERT ... ON CONFLICT, batching and UTC every write shares;
* :mod:`store.knowledge` — models configured at run time, lessons, planner runs;
* :mod:`store.trust` and :mod:`store.metrics` — what the approval policy and the metrics
  read;
* :mod:`contracts.snapshots` — ``PlanSnapshot`` and ``snapshot_of``: pure, safe to import in
  workflow code. Nothing is imported here, so importing it stays free of SQLAlchemy.
"""
