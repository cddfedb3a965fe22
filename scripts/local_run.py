"""`elo run` on this machine for the benchmark and chaos scripts: on free ports, in its own process group, waited
for until it serves, stopped with SIGINT (killed if it hangs); and the demo model's tokenizer path."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_app_config(pools: dict[str, dict] | None = None, router: dict | None = None) -> str:
    """The embedded default's app config as YAML, with the given fields of its pools and router replaced (a
    pool's fields cannot be given alone in an app config file: it would lack the rest)."""
    import yaml

    sys.path.insert(0, str(ROOT))
    from deployments.config import AppConfig

    doc = AppConfig().model_dump(mode="json")
    for name, fields in (pools or {}).items():
        doc["pools"][name].update(fields)
    doc["router"].update(router or {})
    return yaml.safe_dump(doc, sort_keys=False)


def demo_tokenizer() -> str:
    """The demo model's folder (built on first use), which holds its tokenizer."""
    out = subprocess.run([str(BIN / "elo"), "model", "build"], capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1].split()[-1]


@contextlib.contextmanager
def elo_run(args: list[str], log: Path, stop_timeout_s: float = 300.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """`elo run ARGS` (ports chosen here, metrics off), logging to ``log``; yields its base URL and process once it
    serves, and stops it on exit unless it has already ended."""
    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([str(BIN / "elo"), "run", "--port", str(port), "--dashboard-port", str(free_port()),
                             "--metrics-port", "0", *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        while "Serving" not in log.read_text():
            if proc.poll() is not None:
                raise SystemExit(f"elo run exited: {log.read_text()[-2000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(stop_timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
