"""lbhealthd: keep a load-balanced API up when some of its servers are overloaded."""

__version__ = "0.1.0"
