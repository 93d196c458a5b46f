"""Plugins shipped with bifrost_rt; load them from the configuration by import path."""
