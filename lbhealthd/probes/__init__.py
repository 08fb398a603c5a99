"""Probers: how lbhealthd measures a server (an HTTP health endpoint, the LB's own counters).

Every prober turns whatever a server does into a Sample; a bad server is data, not an exception.
"""
