"""The one family of errors a user can fix.

Every message is one line: where (a field path), the value, what is allowed.
The CLI prints it and exits 2; anything that is not a SimdlError is a bug.
"""
from __future__ import annotations


class SimdlError(Exception):
    """A problem the user can fix. str() is one line: where, what, what is allowed."""

    def __init__(self, where: str, value: object, allowed: str):
        super().__init__(f"{where}: {value!r} is not valid; {allowed}")
        self.where, self.value, self.allowed = where, value, allowed


class UnitError(SimdlError):
    """A quantity string that does not parse ("300Mbs", "fast")."""


class ScenarioError(SimdlError):
    """A scenario that does not validate."""


class PlanError(SimdlError):
    """A plan that cannot run: a cut out of range, no route, too little memory."""


class CapacityError(SimdlError):
    """A device asked to hold more memory than it has."""

    def __init__(self, device: str, need: float, free: float, capacity: float, label: str = ""):
        what = f" for {label}" if label else ""
        Exception.__init__(
            self,
            f"devices.{device}.memory: needs {need / 2**20:.2f} MiB{what} but only "
            f"{free / 2**20:.2f} MiB of {capacity / 2**20:.2f} MiB is free",
        )
        self.where, self.value = f"devices.{device}.memory", need
        self.allowed = f"at most {free} bytes free"
        self.device, self.need, self.free, self.capacity = device, need, free, capacity


class DeviceGone(SimdlError):
    """Work sent to a device that has left the pool (battery empty, failed, departed)."""

    def __init__(self, device: str, at: float, why: str):
        Exception.__init__(self, f"devices.{device}: left the pool at t={at:.6g} s ({why})")
        self.where, self.value, self.allowed = f"devices.{device}", at, why
        self.device, self.at, self.why = device, at, why
