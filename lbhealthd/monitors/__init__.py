"""Monitors from the postmortem: pure checks that watch a pool rather than decide about it.

``balance`` compares how the LB spreads traffic over a pool with the spread its weights intend,
and raises an alert with hysteresis when one server gets far more than its share.

Monitors do no I/O and read no clock: the caller passes time and observations in.
"""
