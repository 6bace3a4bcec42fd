"""Pure Discord Gateway protocol code and Titanium Cluster's wire formats.

Nothing here does I/O or imports another package of this project: opcodes,
close codes and what each means for reconnecting, intents, payload builders,
the shard formula, transport decompression, and the versioned formats of the
messages that cross process boundaries.
"""
