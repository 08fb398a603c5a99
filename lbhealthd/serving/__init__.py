"""What keeps the listeners of the daemon and of the agent from being flooded.

``guard`` caps and times out each listener's connections, ``listener`` accepts them one at a
time and logs a failing ``accept()`` once per interval instead of once per attempt,
``fd_limit`` raises the soft descriptor limit at start and shares it out so the listeners never
take the descriptors the load balancer, the state files and the probes need, ``throttle``
paces the lines they log.
"""

from lbhealthd.serving.fd_limit import listener_cap, raise_soft_limit
from lbhealthd.serving.guard import ConnectionGuard, Limits
from lbhealthd.serving.listener import Listener, tcp_sockets, unix_socket

__all__ = [
    "ConnectionGuard",
    "Limits",
    "Listener",
    "listener_cap",
    "raise_soft_limit",
    "tcp_sockets",
    "unix_socket",
]
