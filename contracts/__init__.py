"""What crosses the Temporal boundary: the names of the activities and the one object
each takes and returns, the errors they raise, the tool catalog and the store snapshots.

Workflows, the API and the CLI import these, never an activity's implementation, so a
workflow module stays free of I/O libraries and the API starts without the sandbox or a
model client. Everything here is pure (pydantic models and constants over ``plans``).
"""
