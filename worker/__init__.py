"""A worker process: one uvloop event loop running a group of gateway shards."""
