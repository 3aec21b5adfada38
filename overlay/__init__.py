"""A Lokinet-style onion overlay emulation. Knows nothing about messages or swarms."""
