"""Test support shipped with Pollinate: fakes, a manual clock, conformance checks."""

from pollinate.testing.clock import Clock, ManualClock, SystemClock

__all__ = ["Clock", "ManualClock", "SystemClock"]
