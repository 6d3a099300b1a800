"""What the plan client (:class:`workflows.client.PlanClient`) raises instead of Temporal's
own exceptions, so the API and the CLI each map one small set of errors: the API to its
HTTP statuses (:func:`api.errors.api_error_of`), the CLI to its exit codes and messages.

Plain Python: importing this module loads neither Temporal nor pydantic, so the CLI can
catch these errors without paying for either.
"""

from __future__ import annotations


class PlanClientError(Exception):
    """A call about a plan got no usable answer; the message says why, for a person."""


class TemporalUnavailable(PlanClientError):
    """Temporal cannot be reached, or did not answer in time (the API's 503)."""


class NoWorker(TemporalUnavailable):
    """Temporal is up, but no worker answered in time: a query, an update, the planner."""


class PlannerUnavailable(NoWorker):
    """No worker ran the planner, or it did not finish in time."""


class PlanNotFound(PlanClientError):
    """Temporal knows no workflow of this plan (never executed, or deleted by retention)."""

    def __init__(self, plan_id: str, workflow_id: str):
        super().__init__(f"no plan {plan_id!r}")
        self.plan_id, self.workflow_id = plan_id, workflow_id


class ControlRefused(PlanClientError):
    """The workflow refused a control: the transition is not allowed now. The message is
    the workflow's reason (the refusal is also in the plan's audit trail)."""


class InvalidControl(PlanClientError):
    """The workflow's validator refused a control's argument; the message says which."""


class PlanAlreadyRan(PlanClientError):
    """A plan id whose workflow already ended cannot be started again (only resumed)."""

    def __init__(self, plan_id: str, workflow_id: str, ended: str | None = None):
        super().__init__(f"plan {plan_id} already ran" + (f" and ended {ended}" if ended else ""))
        self.plan_id, self.workflow_id, self.ended = plan_id, workflow_id, ended


class ResumeRefused(PlanClientError):
    """The plan cannot be resumed from failure now; the message says why."""


class TooLargeForTemporal(PlanClientError):
    """What was sent is over Temporal's size limit for one request or payload (e.g. a plan
    with megabytes of inputs): not a reason to try again (the API's 413)."""


class TemporalError(PlanClientError):
    """Temporal answered with an unexpected error, or the workflow failed to answer a
    query or an update (the API's 502)."""


class PlanClosed(TemporalError):
    """The plan's workflow has closed and the query asked to be answered only while it is
    open: answering it would have meant replaying the whole run on a worker."""

    def __init__(self, plan_id: str):
        super().__init__(f"plan {plan_id}'s workflow has closed")
        self.plan_id = plan_id


class QueryUnsupported(TemporalError):
    """The plan's worker does not know the query (an older worker): the caller falls back
    to what every worker answers (the ``status`` query)."""

    def __init__(self, query: str, message: str = ""):
        super().__init__(
            f"the worker does not know the {query} query" + (f": {message}" if message else "")
        )
        self.query = query
