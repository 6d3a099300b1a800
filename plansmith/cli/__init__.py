"""The ``plansmith`` command line, a module per group of verbs; :mod:`plansmith.cli.main`
holds the parser and the entry point (``python -m plansmith.cli`` runs it)."""
