"""The chaos suite (``make chaos``, ``python -m chaos.run``): faults and hostile input
against a local stack, and the figures that must stay 0. Not part of the product."""
