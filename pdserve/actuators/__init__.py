"""Actuators: the only code that starts, stops or counts replicas in an outside system."""
