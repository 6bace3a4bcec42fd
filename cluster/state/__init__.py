"""Shared and crash-safe state: session checkpoints (state dir, Redis), leases and fencing, the Redis arbiter."""
