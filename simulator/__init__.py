"""A local stand-in for Discord: REST, the gateway, its rules, and fault injection."""
