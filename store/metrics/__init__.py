"""Planning metrics, read from the store (SQLite and PostgreSQL alike).

Every function takes a database session (``store.db.session_scope(engine)``) and only
reads. Counts are aggregated in SQL; what needs the plan document (a step's kind and tool
live in ``plan_versions.document``, not in ``step_results``) is grouped in SQL by
``(plan, version, step, status)`` first and mapped to kinds and tools in Python, with the
parsed step maps cached per database (a version's document never changes once written).
Scans that cannot be aggregated in SQL are bounded (:mod:`store.metrics.sql`).

- :mod:`~store.metrics.models`: the answers (also the API's response models)
- :mod:`~store.metrics.sql`: the tables, bounds and SQL helpers the queries share
- :mod:`~store.metrics.steps`: step kinds and tools from plan documents, step durations
  and finished steps by kind and tool
- :mod:`~store.metrics.scores`: plan quality (the formula is :mod:`plans.quality`) and
  the diffs of corrections
- :mod:`~store.metrics.success`: success by agent, tool or step kind; per-agent summary
  with trust
- :mod:`~store.metrics.trends`: runs, quality and planner rounds per hour, day or week
- :mod:`~store.metrics.waiting`: plans waiting for a person
- :mod:`~store.metrics.planner`: what the planner's runs took
- :mod:`~store.metrics.counts`: everything ``GET /metrics`` (Prometheus) exposes
"""
