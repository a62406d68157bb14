"""`ConfigError`, shared by the config sections (`worker/config.py`, `worker/spec_config.py`);
a leaf module (imports nothing)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field or flag."""
