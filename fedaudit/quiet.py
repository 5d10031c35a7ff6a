"""A quiet command line on machines without a GPU: no CUDA probe lines when TensorFlow starts.

On import, TensorFlow's C++ libraries print a few lines to the process's standard error before its logging is
set up (so ``TF_CPP_MIN_LOG_LEVEL`` does not reach them): that absl is not initialised, that oneDNN is on, that
no CUDA driver was found, which CPU instructions the build could use; its first operation then logs a failed
``cuInit``. On a machine with no NVIDIA driver these say nothing a user can act on.

:func:`quiet_tensorflow` (called by the ``fedaudit`` command before anything imports TensorFlow) does, only when
no NVIDIA driver is present and only when not verbose:

- sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless the user set it (drops the ``cuInit`` error; Python errors still raise);
- installs a one-shot import hook around the first ``import tensorflow``: file descriptor 2 goes to a temporary
  file for the duration of that import, then every line that is not one of the probe lines above is written back
  to standard error, in order.

On a machine with a driver nothing is changed: GPU messages stay visible and no device is hidden.
No TensorFlow here.
"""

from __future__ import annotations

import importlib.abc
import os
import re
import sys
import tempfile
from pathlib import Path

#: files whose presence means an NVIDIA driver is installed
DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0")

#: TensorFlow's start-up lines on a machine without a GPU driver
NOISE = tuple(re.compile(p) for p in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR\s*$",
    r"^[IW]\d{4} [\d:.]+\s+\d+ (port|cudart_stub|cpu_feature_guard|cuda_executor|cpu_utils)\.cc:\d+\] ",
    r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.\s*$",
    r"^E\d{4} [\d:.]+\s+\d+ cuda_platform\.cc:\d+\] failed call to cuInit",
    r"^\S+ \S+: I external/local_xla/xla/tsl/cuda/cudart_stub\.cc:\d+\] Could not find cuda drivers",
))


def gpu_driver_present(files=DRIVER_FILES) -> bool:
    """Whether this machine has an NVIDIA driver (a file of ``files`` exists)."""
    return any(Path(f).exists() for f in files)


def is_noise(line: str) -> bool:
    return any(p.search(line) for p in NOISE)


def _filter(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not is_noise(line))


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader's ``exec_module`` with fd 2 captured; writes back the lines that are not noise."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            saved = None
        if saved is None:
            self.loader.exec_module(module)
            return
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                self.loader.exec_module(module)
            finally:
                try:
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                kept = _filter(capture.read().decode("utf-8", errors="replace"))
                # the real loader again, so that tools that inspect the module see the usual one
                module.__loader__ = self.loader
                if getattr(module, "__spec__", None) is not None:
                    module.__spec__.loader = self.loader
                if kept:
                    sys.stderr.write(kept)
                    sys.stderr.flush()


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` with the other finders, and wraps its loader once."""

    name = "tensorflow"

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        uninstall()
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


_FINDER = _QuietFinder()


def install() -> None:
    """Hook the next ``import tensorflow`` (nothing happens if TensorFlow is already imported)."""
    if "tensorflow" not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    while _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def quiet_tensorflow(verbose: bool = False) -> bool:
    """Silence TensorFlow's start-up probe lines when no GPU driver is present; return whether it did."""
    if verbose or gpu_driver_present():
        return False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    install()
    return True


__all__ = ["quiet_tensorflow", "gpu_driver_present", "is_noise", "install", "uninstall", "NOISE"]
