"""Ray for a federation run: a local head bound to 127.0.0.1 by default, or an existing cluster."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

LOCAL_IP = "127.0.0.1"
STARTUP_TIMEOUT = "timed out during startup"     # Ray's message when its raylet did not register within 30 s


def quiet_environment() -> None:
    """No telemetry or usage reports leave this machine; keep TensorFlow's start-up chatter down."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    logging.getLogger("flwr").addFilter(_drop_flower_notices)


def _drop_flower_notices(record: logging.LogRecord) -> bool:
    """Flower warns on every run that run_simulation is deprecated and that client evaluation is off; we know."""
    message = record.getMessage()
    return "DEPRECATED FEATURE" not in message and "fraction_evaluate is set to 0.0" not in message


def init_ray(address: str = "", num_cpus: int = 0, num_gpus: float | None = None) -> dict:
    """Start (or join) Ray for one run and return the cluster's resources.

    With no address and no ``RAY_ADDRESS`` in the environment, a local Ray starts bound to 127.0.0.1 with no
    dashboard. With an address (or inside ``ray job submit``, which sets ``RAY_ADDRESS``), the run joins it.
    """
    import ray

    quiet_environment()
    env = {"env_vars": {k: os.environ[k] for k in ("FLWR_TELEMETRY_ENABLED", "RAY_USAGE_STATS_ENABLED",
                                                   "TF_CPP_MIN_LOG_LEVEL")}}
    if ray.is_initialized():
        return ray.cluster_resources()
    # Workers' output (TensorFlow's start-up chatter in every actor) reaches the terminal only with -v;
    # failures still do: Flower turns a client's exception into an error reply, the auditor records its own.
    to_driver = log.isEnabledFor(logging.INFO)
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        log.info("joining the Ray cluster at %s", address)
        local = {}
        if _on_loopback(address) and "://" not in address:
            pin_loopback()
            local["_node_ip_address"] = LOCAL_IP
        ray.init(address=address, runtime_env=env, logging_level=logging.WARNING, log_to_driver=to_driver, **local)
    else:
        pin_loopback()
        kwargs = {"num_cpus": num_cpus or os.cpu_count() or 1}
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
        # address="local": always a new Ray of our own, never a cluster that happens to run on this machine
        for attempt in (1, 2):
            try:
                ray.init(address="local", _node_ip_address=LOCAL_IP, include_dashboard=False, runtime_env=env,
                         logging_level=logging.WARNING, log_to_driver=to_driver, **kwargs)
                break
            except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this one
                if attempt == 2 or STARTUP_TIMEOUT not in str(exc):
                    raise
                # Ray waits a fixed 30 s for its raylet; on a loaded machine (several runs starting at once on one
                # node of a cluster) that can pass: start it once more
                log.warning("the local Ray did not start in time (%s); starting it again", exc)
                ray.shutdown()
    return ray.cluster_resources()


def pin_loopback() -> None:
    """Keep a local Ray on 127.0.0.1.

    Ray replaces 127.0.0.1 (as ``_node_ip_address`` or in a cluster address) by the address this machine has
    on its network ("reachable from other nodes"), unless multi-node clusters are off, as Ray itself turns them
    off on macOS and Windows. A local run, and a run that joins a cluster on this machine's loopback, turn that
    replacement off in this process, so that every Ray process it starts or talks to listens and connects on
    127.0.0.1. A run that joins a cluster elsewhere leaves it on.
    """
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def _on_loopback(address: str) -> bool:
    """Whether a cluster address (``host:port``) names this machine's loopback: the driver then joins as
    127.0.0.1 too, not as whatever address this machine's network has."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in (LOCAL_IP, "localhost", "::1")


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
