"""The console at ``/console``: a web page where people steer running plans.

Server-rendered Jinja2 templates with htmx (vendored), the DAG laid out by networkx, a
session cookie exchanged for an API key, CSRF tokens on every action. See
``docs/console.md``; the routes are :mod:`api.console.routes`.
"""
