"""Backends, one package per target family (installed as `qpass.targets`)."""
