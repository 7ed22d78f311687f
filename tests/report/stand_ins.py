"""Stand-ins for the few things report takes besides the event log (a uniquely
named helper module, not conftest: test folders are not packages)."""


class Spec:
    """A device spec as report sees it: a type and unit names."""

    def __init__(self, type_, units):
        self.type, self.units = type_, dict.fromkeys(units, None)


class Joules:
    """A device's energy as report sees it."""

    def __init__(self, idle, compute, radio):
        self.idle, self.compute, self.radio = idle, compute, radio
        self.total = idle + compute + radio
