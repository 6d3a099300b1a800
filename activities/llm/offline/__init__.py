"""The offline model: a deterministic stand-in for Anthropic when there is no API key.

- :mod:`~activities.llm.offline.model`: ``OfflineModel``, the chat model that answers
  every request in the Messages shape, and its decisions and verdicts.
- :mod:`~activities.llm.offline.planner`: how it turns a task into a plan document.
- :mod:`~activities.llm.offline.plan_repair`: how it fixes its last plan from repair
  feedback.
- :mod:`~activities.llm.offline.planning_brief`: what a ``submit_plan`` request asks for.
- :mod:`~activities.llm.offline.schema_instance`: the smallest value valid against a JSON
  schema.
- :mod:`~activities.llm.offline.reading`: reading a request's texts, tags, tool results
  and JSON objects; the ``[offline]`` label.
"""
