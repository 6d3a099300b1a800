"""What steps do: the step activity, the tools, the code sandbox, the language models
and the planner, and the store writes of the workflows. Importing this package loads
nothing; the worker (``worker.py``) imports the modules it hosts."""
