"""`lbhealthd demo`: the postmortem's outage replayed on loopback with lbhealthd running.

``capacity`` models the API servers, ``load`` is the open-loop client, ``plan`` the weights, the
load over time and the daemon's config, ``report`` the live table and summary, ``plot`` the PNG,
and ``scenario`` puts them together (``run_demo``).
"""

from lbhealthd.demo.scenario import run_demo

__all__ = ["run_demo"]
