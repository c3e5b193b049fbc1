"""Batched, device-agnostic two-view geometry in torch (no networks, no ROS)."""
