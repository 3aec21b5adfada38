"""p2psync: device-to-device sync for swarm-based private messengers."""
