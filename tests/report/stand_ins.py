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


def every_kind_log(n=400, seed=0):
    """A seeded random event log (rows in recorder.COLUMNS order) with every kind of
    row in recorder.KINDS: times are multiples of 1/8 s (sums stay exact), spans on one
    unit or link overlap now and then, labels repeat, hold commas, quotes and non-ASCII.
    Each request ends once, as in a real log: a `request` or `failed` row (label: a cause)
    takes the next request number of its own."""
    import numpy as np

    from simdl.report.faults import CAUSES
    from simdl.sim.recorder import KINDS

    rng = np.random.default_rng(seed)
    devices = ["phone", "tv", "watch0", "watch1", "pc10", "pc2"]
    units = ["cpu", "gpu", "npu"]
    labels = ["fc1 r0.0", 'act "r1"', "grad, step 2", "weights", "", "café r3"]
    classes = ["", "interactive", "batch"]
    rows, ended = [], 0
    for i in range(n):
        kind = list(KINDS)[i % len(KINDS)]
        start = float(rng.integers(0, 400)) / 8
        end = start + float(rng.integers(0, 40)) / 8
        device = devices[rng.integers(len(devices))]
        resource = {"compute": units, "lost": units, "transfer": devices,
                    "request": classes, "failed": ["", "batch"], "retry": classes,
                    "late": classes, "planwait": classes, "step": ["bsp", "ring"],
                    "apply": devices}.get(kind, ["memory"])
        resource = resource[rng.integers(len(resource))]
        if kind in ("alloc", "leave"):
            end = start
        nbytes = float(rng.integers(-4, 8) * 1024 if kind == "alloc" else rng.integers(0, 3) * 512)
        label = labels[rng.integers(len(labels))]
        request = int(rng.integers(-1, 20))
        if kind in ("request", "failed"):
            request, ended = ended, ended + 1
            if kind == "failed":
                label = CAUSES[request % len(CAUSES)]
        rows.append((start, end, kind, device, resource, label,
                     float(rng.integers(0, 4)) * 1e6, nbytes, request, int(rng.integers(-1, 5))))
    return rows
