"""The one family of errors a user can fix.

Every message is one line: where (a field path), the value, what is allowed.
The CLI prints it and exits 2; anything that is not a SimdlError is a bug.
"""
from __future__ import annotations


class SimdlError(Exception):
    """A problem the user can fix. str() is one line: where, what, what is allowed."""

    def __init__(self, where: str, value: object, allowed: str):
        super().__init__(where, value, allowed)  # args rebuild the error (simpy, pickle)
        self.where, self.value, self.allowed = where, value, allowed

    def __str__(self) -> str:
        return f"{self.where}: {self.value!r} is not valid; {self.allowed}"


class UnitError(SimdlError):
    """A quantity string that does not parse ("300Mbs", "fast")."""


class ScenarioError(SimdlError):
    """A scenario that does not validate."""


class PlanError(SimdlError):
    """A plan that cannot run: a cut out of range, no route, too little memory."""


class CapacityError(SimdlError):
    """A device asked to hold more memory than it has."""

    def __init__(self, device: str, need: float, free: float, capacity: float, label: str = ""):
        super().__init__(f"devices.{device}.memory", need, f"at most {free} bytes are free")
        self.args = (device, need, free, capacity, label)
        self.device, self.need, self.free, self.capacity, self.label = self.args

    def __str__(self) -> str:
        what = f" for {self.label}" if self.label else ""
        return (f"{self.where}: needs {self.need / 2**20:.2f} MiB{what} but only "
                f"{self.free / 2**20:.2f} MiB of {self.capacity / 2**20:.2f} MiB is free")


class DeviceGone(SimdlError):
    """Work sent to a device that has left the pool (battery empty, failed, departed)."""

    def __init__(self, device: str, at: float, why: str):
        super().__init__(f"devices.{device}", at, why)
        self.args = (device, at, why)
        self.device, self.at, self.why = device, at, why

    def __str__(self) -> str:
        return f"{self.where}: left the pool at t={self.at:.6g} s ({self.why})"
