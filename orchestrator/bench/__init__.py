"""Load generator and benchmark for any OpenAI-compatible endpoint (`elo bench`).

Flow: ``trace`` (optional recorded arrivals) → ``workload`` (pure request plan) →
``loadgen`` (async HTTP runner producing per-request records) → ``stats`` (pure
summary) → ``report`` (rich tables and JSON). ``cli`` wires them into typer.

Submodules are imported lazily by callers so that, e.g., the simulator can use
``orchestrator.bench.trace`` without pulling in the OpenAI client.
"""
