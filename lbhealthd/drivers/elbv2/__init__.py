"""Drive AWS ELBv2 target groups (ALB, NLB, GWLB) through the ElasticLoadBalancingV2 API.

A pool is a target group, named by its name or ARN (a name is resolved to its ARN once with
``DescribeTargetGroups`` and cached, with the group's attributes). A member is a registered
target: its name is the target Id (``i-0abc…`` or an IP address); a target registered on
several ports is named ``ID:PORT`` for each of them. Target Ids outside lbhealthd's safe
charset (``lambda`` and ``alb`` groups are refused altogether) are skipped with a warning.

State mapping (the LB has no admin state of its own; registration is the admin state):

    registered, any state but draining      -> READY
    draining (deregistration in progress)   -> DRAIN, or the state lbhealthd asked for
    gone after a deregistration lbhealthd did, remembered here -> DRAIN / MAINT, op DOWN

    healthy, unavailable (checks off)   -> UP          initial  -> STARTING
    draining                            -> STOPPING    unhealthy, unhealthy.draining, unused
                                                       and anything else -> DOWN

``set_state`` DRAIN or MAINT deregisters the target (connections drain for the group's
``deregistration_delay.timeout_seconds``); READY registers it again with the same port (and
Availability Zone). A deregistered target leaves ``DescribeTargetHealth`` once drained, so the
driver remembers the targets it deregistered (in memory, and in ``state_file`` when given, so
a restarted daemon can still restore them). There are no per-target weights: every member has
weight 1, and ``set_weight`` refuses anything else (the LB ramps new targets itself when the
group has ``slow_start.duration_seconds``).

Errors: throttling, 5xx, connection errors and timeouts -> ``Unavailable``, retried with
jittered exponential backoff within ``timeout``; an unknown target group or target, a
validation error, a permission error or missing credentials -> ``Rejected`` (never retried).

Modules: ``driver`` (the :class:`ELBv2Driver`), ``target_groups`` (a target group and its
targets as Members), ``deregistered`` (the targets to register again, kept in ``state_file``),
``calls`` (the AWS clients, retries and error mapping).
"""

from lbhealthd.drivers.elbv2.calls import DENIED_CODES, TRANSIENT_CODES
from lbhealthd.drivers.elbv2.deregistered import Remembered
from lbhealthd.drivers.elbv2.driver import ELBv2Driver
from lbhealthd.drivers.elbv2.target_groups import TargetGroup

__all__ = ["DENIED_CODES", "TRANSIENT_CODES", "ELBv2Driver", "Remembered", "TargetGroup"]
