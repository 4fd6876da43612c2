"""Joining Ray: the configured cluster, or one started in-process on loopback (the embedded default)."""

from __future__ import annotations

from omnicart.settings import Settings


def ensure_ray(settings: Settings) -> None:
    """Connect to ``settings.ray_address``, or start a local Ray bound to ``settings.host``; no-op when connected."""
    import ray

    if ray.is_initialized():
        return
    if settings.ray_address:
        ray.init(address=settings.ray_address, log_to_driver=False)
    else:
        # "local": always a fresh in-process cluster, never a head someone else started on this machine
        ray.init(address="local", include_dashboard=False, _node_ip_address=settings.host, log_to_driver=False)


def gpu_available(settings: Settings) -> bool:
    """Whether jobs should ask for a GPU: by setting, or in ``auto`` mode when the cluster has one."""
    import ray

    if settings.use_gpu != "auto":
        return settings.use_gpu == "yes"
    return ray.cluster_resources().get("GPU", 0) > 0
