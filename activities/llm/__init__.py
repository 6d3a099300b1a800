"""Language models: the common interface (base), the Anthropic client, the offline
stand-in, the model selector and the planner."""
