"""Quantization support shared by the built-in passes: observers, parameter choice, calibration data."""
