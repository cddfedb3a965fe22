"""Trace-replay simulator: the production router choice and controller on a fake clock with simulated pools.

Flow: ``model`` (validated sim config: pools, startup delays, router) + ``profile`` (per-replica service model,
calibrated from ``elo bench`` runs) → ``engine`` (discrete-event replay of a trace through
``deployments.routing.route`` (with the controller's routing plan) and the real ``orchestrator.control.loop.Controller``, whose adapters are
the simulated ``cluster``) →
``report`` (cost, SLO attainment, latency, drops, scaling; table, JSON, PNG). ``baselines`` builds the policies
a run is compared with (static peak, edge only, the best static mix, Ray Serve default, Knative-like, GPU only, the clairvoyant bound);
``tune`` searches policy knobs; ``sim2real`` sets a simulated slice beside a live one; ``cli`` wires them into
``elo simulate`` / ``elo tune`` / ``elo sim2real`` / ``elo bench profile``.

Pure Python + numpy: no Ray, no vLLM, no torch, no HTTP outside ``sim2real``'s live half (checked by
import-linter).
"""
