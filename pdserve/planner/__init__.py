"""The planner: sizes the prefill and decode pools separately from SLO signals.

``signals`` reads the fleet (request stream + worker registry in Redis), ``policy`` decides
(plain Python, no I/O), ``actuators`` apply (Ray pool manager or KubeRay RayCluster), ``runner``
loops, ``cli`` is the ``pdserve planner`` subcommand. See docs/planner.md.
"""

from pdserve.planner.actuators import (
    Actuator,
    ActuatorError,
    ConflictError,
    Drainer,
    KubernetesActuator,
    PoolManagerHandle,
    RayActuator,
    RBACError,
)
from pdserve.planner.policy import (
    Decision,
    PlannerPolicy,
    PolicyTuning,
    PoolDecision,
    WorkerCapacity,
)
from pdserve.planner.runner import PlannerMetrics, PlannerRunner
from pdserve.planner.signals import (
    FleetSignals,
    RedisSignalSource,
    RequestRecord,
    SignalSource,
    WorkerLoad,
    publish_request_record,
)

__all__ = [
    "Actuator",
    "ActuatorError",
    "ConflictError",
    "Decision",
    "Drainer",
    "FleetSignals",
    "KubernetesActuator",
    "PlannerMetrics",
    "PlannerPolicy",
    "PlannerRunner",
    "PolicyTuning",
    "PoolDecision",
    "PoolManagerHandle",
    "RBACError",
    "RayActuator",
    "RedisSignalSource",
    "RequestRecord",
    "SignalSource",
    "WorkerCapacity",
    "WorkerLoad",
    "publish_request_record",
]
