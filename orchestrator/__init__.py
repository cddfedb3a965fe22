"""Control plane of the elastic LLM orchestrator: CLI, main job, benchmarks and (later) the autoscaler."""
