"""What steps do: the tool registry and built-in tools, the step activity, the code
sandbox, persistence."""

from activities import sandbox  # noqa: F401  registers the `python` tool (code sandbox)
