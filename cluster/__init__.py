"""The supervisor: CLI, planner, process manager, identify coordinator, relay, health."""
