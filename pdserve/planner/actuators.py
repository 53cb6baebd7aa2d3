"""How the planner changes pool sizes: one ``Actuator`` interface, two implementations.

``RayActuator``
    Calls the pool manager (a detached Ray actor that creates, drains and removes worker actors)
    through :class:`PoolManagerHandle`. Used by ``pdserve up`` and any Ray cluster not run by
    KubeRay.

``KubernetesActuator``
    Sets ``spec.workerGroupSpecs[i].replicas`` of the KubeRay ``RayCluster`` whose group is
    named ``prefill`` or ``decode``. It makes exactly two kinds of API calls, GET and PATCH on
    ``rayclusters`` (group ``ray.io``, version ``v1``), the two verbs the Helm chart's planner Role
    grants; keep both in sync. The PATCH is a JSON patch (``application/json-patch+json``) that
    first tests the group's name at the index it read, so a reordered spec fails instead of
    resizing the wrong group. 409 Conflict, and 422 from a failed test, re-read and retry a
    bounded number of times; 403 raises :class:`RBACError` naming the missing verb.

Scaling down on Kubernetes: KubeRay deletes pods when ``replicas`` drops. Workers are drained
first through Ray (the pool manager stops routing to them and lets running requests finish), and
the drained pods are named in ``scaleStrategy.workersToDelete`` in the same PATCH, so KubeRay
removes those and not random busy ones. Without a ``drainer`` KubeRay picks the pods itself.

Errors::

    ActuatorError
     ├── RBACError        the API server answered 403
     └── ConflictError    the RayCluster kept changing under us (409/422 after every retry)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pdserve.planner.signals import POOLS

__all__ = [
    "JSON_PATCH_CONTENT_TYPE",
    "POOL_MANAGER_NAME",
    "RAYCLUSTER_GROUP",
    "RAYCLUSTER_PLURAL",
    "RAYCLUSTER_VERSION",
    "RAY_NAMESPACE",
    "Actuator",
    "ActuatorError",
    "ConflictError",
    "Drainer",
    "KubernetesActuator",
    "PoolManagerHandle",
    "RBACError",
    "RayActuator",
    "call_method",
]

logger = logging.getLogger(__name__)

POOL_MANAGER_NAME = "pdserve-pool-manager"
"""Name of the detached pool-manager actor the ``RayActuator`` looks up."""
RAY_NAMESPACE = "pdserve"
"""Ray namespace of pdserve's named actors."""
RAYCLUSTER_GROUP = "ray.io"
RAYCLUSTER_VERSION = "v1"
RAYCLUSTER_PLURAL = "rayclusters"
JSON_PATCH_CONTENT_TYPE = "application/json-patch+json"


class ActuatorError(RuntimeError):
    """A scaling action could not be carried out."""


class RBACError(ActuatorError):
    """The Kubernetes API server refused a verb (403): the planner's Role lacks it."""

    def __init__(self, verb: str, name: str, namespace: str, detail: str = "") -> None:
        self.verb = verb
        super().__init__(
            f"forbidden: the planner's service account may not '{verb}' "
            f"{RAYCLUSTER_PLURAL}.{RAYCLUSTER_GROUP} (RayCluster {namespace}/{name}). Grant verbs "
            f"[get, patch] on resource '{RAYCLUSTER_PLURAL}' in apiGroup '{RAYCLUSTER_GROUP}' "
            f"to the planner's Role (the Helm chart does). {detail}".rstrip()
        )


class ConflictError(ActuatorError):
    """Every retry of a PATCH met a concurrent change."""


class Actuator(Protocol):
    """Reads and sets the size of the prefill and decode pools."""

    async def current(self) -> dict[str, int]:
        """Pool sizes as last set (``{"prefill": n, "decode": m}``)."""
        ...

    async def scale(self, role: str, replicas: int) -> None:
        """Sets pool ``role`` to ``replicas`` workers; returns once the change is accepted."""
        ...


class PoolManagerHandle(Protocol):
    """The pool manager as the planner calls it.

    Any object whose ``scale`` and ``sizes`` return awaitables (plain async methods) fits, and
    so does a Ray actor handle (its methods are called with ``.remote`` and the ObjectRefs
    awaited).
    """

    def scale(self, role: str, n: int) -> Any:
        """Creates or drains-and-removes workers until ``role`` has ``n``."""
        ...

    def sizes(self) -> Any:
        """Current pool sizes, ``{"prefill": n, "decode": m}``."""
        ...


class Drainer(Protocol):
    """Drains workers before Kubernetes removes their pods (the pool manager offers it)."""

    def drain(self, role: str, count: int) -> Any:
        """Drains ``count`` workers of ``role``; returns (or awaits to) their pod names."""
        ...


async def call_method(handle: Any, method: str, *args: Any) -> Any:
    """Calls ``handle.method(*args)`` and awaits the result: ``.remote`` on a Ray actor handle
    (the ObjectRef is awaited), a plain or async method on any other object."""
    fn = getattr(handle, method)
    remote = getattr(fn, "remote", None)
    result = remote(*args) if callable(remote) else fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _check_role(role: str) -> None:
    if role not in POOLS:
        raise ValueError(f"unknown pool {role!r}; expected one of {POOLS}")


def _check_replicas(replicas: int) -> None:
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ValueError(f"replicas must be an int >= 0, got {replicas!r}")


class RayActuator:
    """Scales pools through the Ray pool manager."""

    def __init__(self, manager: PoolManagerHandle) -> None:
        self._manager = manager

    @classmethod
    def connect(
        cls,
        address: str | None = None,
        name: str = POOL_MANAGER_NAME,
        namespace: str = RAY_NAMESPACE,
    ) -> RayActuator:
        """Joins the Ray cluster at ``address`` (default: the running one) and looks up the
        detached pool-manager actor ``name``."""
        import ray

        if not ray.is_initialized():
            ray.init(address=address or "auto", namespace=namespace, log_to_driver=False)
        try:
            handle = ray.get_actor(name, namespace=namespace)
        except ValueError as exc:
            raise ActuatorError(
                f"no pool manager actor {name!r} in Ray namespace {namespace!r}: {exc}"
            ) from exc
        return cls(handle)

    async def current(self) -> dict[str, int]:
        sizes = await call_method(self._manager, "sizes")
        if not isinstance(sizes, Mapping):
            raise ActuatorError(f"pool manager sizes() returned {sizes!r}, not a mapping")
        return {role: int(sizes.get(role, 0)) for role in POOLS}

    async def scale(self, role: str, replicas: int) -> None:
        _check_role(role)
        _check_replicas(replicas)
        logger.info("ray: scaling pool %s to %d", role, replicas)
        await call_method(self._manager, "scale", role, replicas)


class KubernetesActuator:
    """Scales pools by patching the KubeRay RayCluster's worker-group replicas."""

    def __init__(
        self,
        name: str,
        namespace: str = "default",
        *,
        api_client: Any | None = None,
        group_names: Mapping[str, str] | None = None,
        max_retries: int = 5,
        retry_backoff_s: float = 0.05,
        drainer: Drainer | None = None,
        request_timeout_s: float = 10.0,
    ) -> None:
        """``api_client`` is a ``kubernetes.client.ApiClient`` (default: in-cluster config, else
        kubeconfig); ``group_names`` maps pools to ``groupName`` (default: the same names)."""
        from kubernetes import client

        if not name:
            raise ValueError("the RayCluster name must not be empty")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.name = name
        self.namespace = namespace
        self._api_client = api_client if api_client is not None else self.load_api_client()
        self._api = client.CustomObjectsApi(self._api_client)
        self._group_names = dict(group_names or {role: role for role in POOLS})
        self._max_retries = max_retries
        self._retry_backoff_s = retry_backoff_s
        self._drainer = drainer
        self._timeout = request_timeout_s

    @staticmethod
    def load_api_client(config_file: str | None = None, context: str | None = None) -> Any:
        """An ``ApiClient`` from the pod's service account, else from a kubeconfig."""
        from kubernetes import client, config

        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(
                config_file=config_file, context=context, client_configuration=configuration
            )
        return client.ApiClient(configuration)

    def close(self) -> None:
        """Releases the HTTP connections."""
        self._api_client.close()

    async def current(self) -> dict[str, int]:
        obj = await self._get()
        sizes = {}
        for role in POOLS:
            _, group = self._find_group(obj, role)
            sizes[role] = int(group.get("replicas", 0))
        return sizes

    async def scale(self, role: str, replicas: int) -> None:
        _check_role(role)
        _check_replicas(replicas)
        obj = await self._get()
        _, group = self._find_group(obj, role)
        self._check_group_bounds(role, group, replicas)
        pods: list[str] = []
        if self._drainer is not None and replicas < int(group.get("replicas", 0)):
            pods = await self._drain(role, int(group.get("replicas", 0)) - replicas)
        for attempt in range(self._max_retries + 1):
            index, group = self._find_group(obj, role)
            if int(group.get("replicas", -1)) == replicas and not pods:
                logger.info("kubernetes: pool %s already at %d replicas", role, replicas)
                return
            ops = self._patch_ops(index, group, replicas, pods)
            try:
                await asyncio.to_thread(
                    self._api.patch_namespaced_custom_object,
                    RAYCLUSTER_GROUP,
                    RAYCLUSTER_VERSION,
                    self.namespace,
                    RAYCLUSTER_PLURAL,
                    self.name,
                    ops,
                    _content_type=JSON_PATCH_CONTENT_TYPE,
                    _request_timeout=self._timeout,
                )
            except Exception as exc:
                status = getattr(exc, "status", None)
                if status == 403:
                    raise RBACError("patch", self.name, self.namespace) from exc
                if status not in (409, 422):
                    raise ActuatorError(
                        f"PATCH RayCluster {self.namespace}/{self.name} failed: {exc}"
                    ) from exc
                logger.warning(
                    "kubernetes: PATCH of pool %s got %s (attempt %d/%d); re-reading",
                    role, status, attempt + 1, self._max_retries + 1,
                )
                await asyncio.sleep(self._retry_backoff_s * (attempt + 1))
                obj = await self._get()
                continue
            logger.info(
                "kubernetes: pool %s (group %s) set to %d replicas%s",
                role, self._group_names[role], replicas,
                f", deleting {pods}" if pods else "",
            )
            return
        raise ConflictError(
            f"RayCluster {self.namespace}/{self.name} changed under every one of "
            f"{self._max_retries + 1} PATCH attempts for pool {role}"
        )

    def _patch_ops(
        self, index: int, group: Mapping[str, Any], replicas: int, pods: Sequence[str]
    ) -> list[dict[str, Any]]:
        base = f"/spec/workerGroupSpecs/{index}"
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": f"{base}/groupName", "value": group["groupName"]},
            {"op": "replace" if "replicas" in group else "add", "path": f"{base}/replicas",
             "value": replicas},
        ]
        if pods:
            strategy = dict(group.get("scaleStrategy") or {})
            strategy["workersToDelete"] = list(pods)
            ops.append({"op": "add", "path": f"{base}/scaleStrategy", "value": strategy})
        return ops

    async def _drain(self, role: str, count: int) -> list[str]:
        pods = await call_method(self._drainer, "drain", role, count)
        if not isinstance(pods, Sequence) or isinstance(pods, str):
            raise ActuatorError(f"drainer returned {pods!r}, not a list of pod names")
        return [str(p) for p in pods]

    async def _get(self) -> Mapping[str, Any]:
        try:
            obj = await asyncio.to_thread(
                self._api.get_namespaced_custom_object,
                RAYCLUSTER_GROUP,
                RAYCLUSTER_VERSION,
                self.namespace,
                RAYCLUSTER_PLURAL,
                self.name,
                _request_timeout=self._timeout,
            )
        except Exception as exc:
            status = getattr(exc, "status", None)
            if status == 403:
                raise RBACError("get", self.name, self.namespace) from exc
            if status == 404:
                raise ActuatorError(
                    f"RayCluster {self.namespace}/{self.name} not found (is KubeRay installed "
                    f"and --raycluster right?)"
                ) from exc
            raise ActuatorError(
                f"GET RayCluster {self.namespace}/{self.name} failed: {exc}"
            ) from exc
        if not isinstance(obj, Mapping):
            raise ActuatorError(f"GET RayCluster returned {type(obj).__name__}, not an object")
        return obj

    def _find_group(self, obj: Mapping[str, Any], role: str) -> tuple[int, Mapping[str, Any]]:
        group_name = self._group_names[role]
        groups = (obj.get("spec") or {}).get("workerGroupSpecs") or []
        for index, group in enumerate(groups):
            if group.get("groupName") == group_name:
                return index, group
        names = [g.get("groupName") for g in groups]
        raise ActuatorError(
            f"RayCluster {self.namespace}/{self.name} has no worker group {group_name!r} "
            f"for pool {role} (groups: {names})"
        )

    def _check_group_bounds(self, role: str, group: Mapping[str, Any], replicas: int) -> None:
        low = group.get("minReplicas")
        high = group.get("maxReplicas")
        if (low is not None and replicas < int(low)) or (high is not None and replicas > int(high)):
            raise ActuatorError(
                f"pool {role}: {replicas} replicas is outside the worker group's "
                f"[minReplicas, maxReplicas] = [{low}, {high}]; align planner.{role} bounds "
                f"with the chart's values"
            )
