"""lbhealthd: keep a load-balanced API up when some of its servers are overloaded."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lbhealthd")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
