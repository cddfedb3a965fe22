"""Ray Serve data plane: the OpenAI-compatible router and the cloud (vLLM) and edge (CPU) replicas."""
