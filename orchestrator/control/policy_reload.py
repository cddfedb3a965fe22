"""Hot reload of the policy file: a changed file that validates replaces the running policy; a bad one is rejected."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from orchestrator.control.config import ConfigError, PolicyFile
from orchestrator.control.policy_loader import load_policy_file

log = logging.getLogger(__name__)


def watch_policy_file(path: Path, reload: Callable[[PolicyFile], None], stop: threading.Event,
                      every_s: float = 2.0) -> None:
    """Until ``stop`` is set, check ``path`` every ``every_s`` seconds; when its modification time changed, load
    and validate it and hand it to ``reload`` (e.g. ``Controller.reload``). A file that does not load, or that
    ``reload`` refuses with a ConfigError, is logged and the last good policy keeps running.

    The modification time is read through symlinks, so a Kubernetes ConfigMap volume (whose files are symlinks
    swapped on update) is followed too.
    """
    seen = path.stat().st_mtime_ns
    while not stop.wait(every_s):
        try:
            mtime = path.stat().st_mtime_ns
            if mtime == seen:
                continue
            seen = mtime
            reload(load_policy_file(path))
            log.warning("policy reloaded from %s", path)
        except (ConfigError, OSError) as e:
            log.error("policy change rejected, keeping the last good policy: %s", e)


__all__ = ["watch_policy_file"]
