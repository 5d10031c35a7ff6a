"""Process-level helpers of the auditor and its shard tasks: TensorFlow threads and memory growth, CPU time and
peak memory of this process, values behind Ray object refs. A leaf module: it imports nothing of fedaudit."""

from __future__ import annotations

import os


def configure_tensorflow(threads: int) -> None:
    """GPU memory growth on (share the GPU with clients) and a bounded number of CPU threads."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):
            pass   # TensorFlow already initialised its devices in this process
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass


def cpu_seconds() -> float:
    """CPU seconds (user + system, all threads) this process has used since it started."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def max_rss_mb() -> float:
    """Peak resident memory of this process, in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def auditor_threads() -> int:
    """CPU threads of the auditor: a quarter of the machine (it shares the CPUs with the clients)."""
    return max(1, (os.cpu_count() or 1) // 4)


def materialize(value):
    """A value, or the value behind a Ray ObjectRef."""
    if value is not None and type(value).__name__ == "ObjectRef":
        import ray

        return ray.get(value)
    return value
