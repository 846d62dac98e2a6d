"""Benchmarks: scripts run by hand (python benchmarks/<name>.py); a package so they share code."""
