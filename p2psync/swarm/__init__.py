"""Swarm storage: service nodes that keep messages per public key for a TTL."""
