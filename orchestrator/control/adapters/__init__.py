"""Adapters between the pure decision layer and the world: observe (``router``) and act (``serve_scaler``, ``local_backend``).

Import from the modules; this package root imports nothing, so the Ray-free parts (``base``, ``fake``) stay
importable from unit tests without pulling in Ray or HTTP clients.
"""
