"""Sync layer: device-to-device history sync and reconciliation (DESIGN.md §7)."""
