"""Packaged YAML configs."""
