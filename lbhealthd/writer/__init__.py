"""The one writer to the load balancer (lb_writer) and its durable staged writes (journal)."""

from lbhealthd.writer.lb_writer import LbWriter, Why

__all__ = ["LbWriter", "Why"]
