"""Topology builders: a pool of devices -> a Network (Wi-Fi star, home, edge, cloud, P2P mesh,
explicit links), with the default figures and their sources, and the TOPOLOGIES registry.

Knows device interfaces and unit strings; knows nothing of routing (hw/network.py), layers,
plans or the clock.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Annotated, Any, Literal, Protocol

from simdl import units
from simdl.errors import ScenarioError
from simdl.hw.network import LinkSpec, Network


class HasInterfaces(Protocol):
    """What the builders read of a DeviceSpec: interface kind -> goodput (bytes/s)."""

    interfaces: Mapping[str, float]


# Default figures. Keep `kind` (spec / measured / estimate) and the source beside each.
# Wi-Fi 6 2x2 80 MHz is 1201 Mbps PHY (spec; HE MCS tables, semfionetworks.com/blog
# 04-2019); Wi-Fi 5 2x2 gives ~520 of its 866.7 Mbps PHY as TCP goodput (measured,
# duckware/wiisfi guide), ~60-65 %. x 0.65 = 780 Mbps of airtime goodput (estimate), the
# same figure as a 2x2 station's goodput in catalogue.yaml (wifi6_2x2).
WIFI6_AIRTIME = "780Mbps"
# One unloaded Wi-Fi hop, one way (estimate; the first Wi-Fi hop dominates home RTT,
# NCTA technical paper 2024 WLESS04 Malladi).
WIFI_LATENCY = "1ms"
# 1000BASE-T gives ~941 Mbps of TCP goodput at 1500 B MTU (spec arithmetic); a switched hop
# is tens of microseconds (estimate).
ETHERNET = "941Mbps"
ETHERNET_LATENCY = "50us"
# Home-to-metro edge over FTTH: a 1 Gbps tier, ~2 ms one way (estimate).
FIBRE = "1Gbps"
FIBRE_LATENCY = "2ms"
# WANs (one way latency). 5G mid-band down 100-200 Mbps (measured, Narayanan et al. WWW 2020,
# 5Gophers); uplink a fifth of that (estimate); only the top 5 % of mobile users see under
# 20 ms minimum RTT (measured, Rizvi, Heidemann, Plonka arXiv 2507.18834) -> 25 ms one way.
# Broadband: a 500/100 Mbps fibre plan and 10 ms one way to a cloud region (estimate).
WAN: dict[str, dict[str, str]] = {
    "5g": {"up": "30Mbps", "down": "150Mbps", "latency": "25ms", "kind": "cellular"},
    "broadband": {"up": "100Mbps", "down": "500Mbps", "latency": "10ms", "kind": "wan"},
}
# Wi-Fi Direct hop (estimate, as a Wi-Fi hop). BLE: one connection interval per message,
# 7.5 ms - 4 s allowed (spec, Silicon Labs BLE docs); 15 ms is Android's high-priority
# interval (estimate). BLE goodput comes from each device's own interfaces["bluetooth"].
P2P_LATENCY = "1ms"
BLUETOOTH_LATENCY = "15ms"
# Software cost of one message (serialise, syscalls, socket), per transfer (estimate).
OVERHEAD = "100us"

Devices = Mapping[str, HasInterfaces]
Quantity = float | str
#: Parameters tagged with their kind of quantity (a key of units.SUFFIXES): the scenario
#: edge then wants the unit written (`airtime: 100` is a slip, not 100 B/s); code calling
#: a builder directly passes SI numbers.
Bandwidth = Annotated[Quantity, "bandwidth"]
Time = Annotated[Quantity, "time"]
MaybeBandwidth = Annotated[Quantity | None, "bandwidth"]
MaybeTime = Annotated[Quantity | None, "time"]


def _bw(value: Quantity, name: str) -> float:
    return units.parse(value, "bandwidth", where=f"network.{name}")


def _time(value: Quantity, name: str) -> float:
    return units.parse(value, "time", where=f"network.{name}")


def _has(spec: HasInterfaces, kind: str) -> bool:
    return spec.interfaces.get(kind, 0) > 0


class _Parts:
    """Nodes, links and media collected by a builder before the Network is made."""

    def __init__(self, devices: Iterable[str]):
        self.nodes: dict[str, str] = {d: "device" for d in devices}
        self.links: list[LinkSpec] = []
        self.media: dict[str, float] = {}

    def build(self, overhead: Quantity) -> Network:
        return Network(self.nodes, self.links, self.media, _time(overhead, "overhead"))


def _lan(parts: _Parts, devices: Devices, names: Sequence[str], airtime: float,
         wifi_latency: float, wired_to: str | None, port: float, port_latency: float) -> None:
    """Put `names` on the LAN: by Ethernet to `wired_to` when both allow it, else on the
    Wi-Fi AP "ap", else by Bluetooth to a device on the LAN that has Bluetooth."""
    parts.nodes.setdefault("ap", "ap")
    parts.media["ap.air"] = airtime
    tethered = []
    for name in names:
        spec = devices[name]
        if _has(spec, "ethernet") and (wired_to is not None or not _has(spec, "wifi")):
            to = wired_to or "ap"
            parts.links.append(LinkSpec(name, to, min(spec.interfaces["ethernet"], port),
                                        port_latency, "ethernet"))
        elif _has(spec, "wifi"):
            parts.links.append(LinkSpec(name, "ap", spec.interfaces["wifi"], wifi_latency,
                                        "wifi", "ap.air"))
        else:
            tethered.append(name)
    for name in tethered:
        _tether(parts, devices, name, [n for n in names if n not in tethered])


def _tether(parts: _Parts, devices: Devices, name: str, lan: list[str]) -> None:
    # A watch with only Bluetooth reaches the LAN through the first LAN device with Bluetooth.
    spec = devices[name]
    hosts = [h for h in lan if _has(devices[h], "bluetooth")]
    if not _has(spec, "bluetooth") or not hosts:
        raise ScenarioError(f"devices.{name}.interfaces", sorted(spec.interfaces),
                            "needs 'wifi' or 'ethernet', or 'bluetooth' and a device with "
                            "Bluetooth on the LAN")
    host = hosts[0]
    bw = min(spec.interfaces["bluetooth"], devices[host].interfaces["bluetooth"])
    medium = f"bluetooth:{host}-{name}"
    parts.media[medium] = bw
    parts.links.append(LinkSpec(name, host, bw, _time(BLUETOOTH_LATENCY, "bluetooth_latency"),
                                "bluetooth", medium))


def _pick(devices: Devices, name: str | None, prefix: str, param: str) -> str | None:
    if name is not None:
        if name not in devices:
            raise ScenarioError(f"network.{param}", name,
                                f"name a device of the pool: {', '.join(devices)}")
        return name
    return next((d for d, s in devices.items()
                 if str(getattr(s, "type", "")).startswith(prefix)), None)


def _site(devices: Devices, *, router: bool = True, edge_device: str | None = None,
          cloud_device: str | None = None,
          need: str = "", uplink: Quantity = FIBRE, uplink_latency: Quantity = FIBRE_LATENCY,
          wan: str = "broadband", up: Quantity | None = None, down: Quantity | None = None,
          wan_latency: Quantity | None = None, airtime: Quantity = WIFI6_AIRTIME,
          wifi_latency: Quantity = WIFI_LATENCY, ethernet: Quantity = ETHERNET,
          ethernet_latency: Quantity = ETHERNET_LATENCY, overhead: Quantity = OVERHEAD) -> Network:
    """The LAN (behind "router", or just the AP), plus the edge device by fibre and the
    cloud device by WAN from that gateway, each where the pool has one (or a non-device
    stand-in node if `need` names it)."""
    if wan not in WAN:
        raise ScenarioError("network.wan", wan, f"choose one of: {', '.join(sorted(WAN))}")
    edge_at = _pick(devices, edge_device, "edge", "edge_device")
    cloud_at = _pick(devices, cloud_device, "cloud", "cloud_device")
    if cloud_at is not None and cloud_at == edge_at:
        raise ScenarioError("network.cloud_device", cloud_at, "must not be the edge device")
    parts = _Parts(devices)
    gateway = "router" if router else "ap"
    parts.nodes[gateway] = gateway
    port, port_latency = _bw(ethernet, "ethernet"), _time(ethernet_latency, "ethernet_latency")
    _lan(parts, devices, [d for d in devices if d not in (edge_at, cloud_at)],
         _bw(airtime, "airtime"), _time(wifi_latency, "wifi_latency"),
         "router" if router else None, port, port_latency)
    if router:
        parts.links.append(LinkSpec("ap", "router", port, port_latency, "ethernet"))
    if edge_at is None and need == "edge":
        edge_at = parts.nodes.setdefault("edge", "edge")
    if edge_at is not None:
        bw = _bw(uplink, "uplink")
        if edge_at in devices and _has(devices[edge_at], "ethernet"):
            bw = min(bw, devices[edge_at].interfaces["ethernet"])
        parts.links.append(LinkSpec(gateway, edge_at, bw,
                                    _time(uplink_latency, "uplink_latency"), "fibre"))
    if cloud_at is None and need == "cloud":
        cloud_at = parts.nodes.setdefault("cloud", "cloud")
    if cloud_at is not None:
        preset = WAN[wan]
        parts.links.append(LinkSpec(
            gateway, cloud_at, _bw(preset["up"] if up is None else up, "up"),
            _time(preset["latency"] if wan_latency is None else wan_latency, "wan_latency"),
            preset["kind"], None, _bw(preset["down"] if down is None else down, "down")))
    return parts.build(overhead)


def wifi_star(devices: Devices, airtime: Bandwidth = WIFI6_AIRTIME,
              latency: Time = WIFI_LATENCY, overhead: Time = OVERHEAD) -> Network:
    """Every device on one access point "ap" whose airtime ("ap.air") all flows share,
    both directions; each station's link is capped by its own Wi-Fi goodput. A device
    without Wi-Fi is wired to the AP, or tethered over Bluetooth; an edge- or cloud-type
    device is reached from the AP by fibre or broadband, as in `home`."""
    return _site(devices, router=False, airtime=airtime, wifi_latency=latency,
                 overhead=overhead)


def home(devices: Devices, airtime: Bandwidth = WIFI6_AIRTIME,
         wifi_latency: Time = WIFI_LATENCY, ethernet: Bandwidth = ETHERNET,
         ethernet_latency: Time = ETHERNET_LATENCY, overhead: Time = OVERHEAD) -> Network:
    """A home: devices with Ethernet (PC, TV, hub) wired to the "router" (a switching
    router), the rest on the Wi-Fi AP "ap", which hangs off the router by Ethernet. An
    edge-type device in the pool is reached by fibre, a cloud-type one by broadband, as in
    `edge` and `cloud` with their defaults."""
    return _site(devices, airtime=airtime, wifi_latency=wifi_latency, ethernet=ethernet,
                 ethernet_latency=ethernet_latency, overhead=overhead)


def edge(devices: Devices, edge_device: str | None = None, uplink: Bandwidth = FIBRE,
         uplink_latency: Time = FIBRE_LATENCY, airtime: Bandwidth = WIFI6_AIRTIME,
         wifi_latency: Time = WIFI_LATENCY, overhead: Time = OVERHEAD) -> Network:
    """The home plus a fibre uplink from the router to the edge server: `edge_device`,
    else the first device whose type starts with "edge", else a non-device node "edge"."""
    return _site(devices, edge_device=edge_device, need="edge", uplink=uplink,
                 uplink_latency=uplink_latency, airtime=airtime, wifi_latency=wifi_latency,
                 overhead=overhead)


def cloud(devices: Devices, cloud_device: str | None = None,
          wan: Literal["5g", "broadband"] = "broadband", up: MaybeBandwidth = None,
          down: MaybeBandwidth = None, wan_latency: MaybeTime = None,
          airtime: Bandwidth = WIFI6_AIRTIME, wifi_latency: Time = WIFI_LATENCY,
          overhead: Time = OVERHEAD) -> Network:
    """The home plus a WAN (broadband or 5G) from the router to the cloud: `up` is
    home->cloud, `down` cloud->home (preset by `wan`). The cloud is `cloud_device`, else the
    first device whose type starts with "cloud", else a non-device node "cloud"."""
    return _site(devices, cloud_device=cloud_device, need="cloud", wan=wan, up=up, down=down,
                 wan_latency=wan_latency, airtime=airtime, wifi_latency=wifi_latency,
                 overhead=overhead)


def p2p_mesh(devices: Devices, pairs: Sequence[tuple[str, str]] | None = None,
             p2p_latency: Time = P2P_LATENCY, bluetooth_latency: Time = BLUETOOTH_LATENCY,
             overhead: Time = OVERHEAD) -> Network:
    """Direct links, no AP: Wi-Fi Direct ("p2p") between devices that both have it, else
    Bluetooth. Each link is its own medium (both directions share one channel) with the
    smaller goodput of its two ends. `pairs` defaults to every pair in the pool; devices
    without a direct link reach each other through others (multi-hop)."""
    latency = {"p2p": _time(p2p_latency, "p2p_latency"),
               "bluetooth": _time(bluetooth_latency, "bluetooth_latency")}
    names = list(devices)
    todo = pairs if pairs is not None else [(a, b) for i, a in enumerate(names)
                                            for b in names[i + 1:]]
    parts = _Parts(devices)
    for i, (a, b) in enumerate(todo):
        for end in (a, b):
            if end not in devices:
                raise ScenarioError(f"network.pairs[{i}]", end, "name devices of the pool")
        kind = next((k for k in ("p2p", "bluetooth")
                     if _has(devices[a], k) and _has(devices[b], k)), None)
        if kind is None:
            if pairs is not None:
                raise ScenarioError(f"network.pairs[{i}]", f"{a}-{b}",
                                    "both devices need 'p2p' or both 'bluetooth'")
            continue
        bw = min(devices[a].interfaces[kind], devices[b].interfaces[kind])
        medium = f"{kind}:{a}-{b}"
        parts.media[medium] = bw
        parts.links.append(LinkSpec(a, b, bw, latency[kind], kind, medium))
    return parts.build(overhead)


_LINK_KEYS = ("a", "b", "bandwidth", "latency", "kind", "medium", "bandwidth_back")


def links(devices: Devices, links: Sequence[Mapping[str, Any]] = (),
          media: Mapping[str, Quantity] | None = None, nodes: Mapping[str, str] | None = None,
          overhead: Time = OVERHEAD) -> Network:
    """An explicit list of links ({a, b, bandwidth, latency, kind, medium, bandwidth_back}).
    Ends that are not devices become nodes of kind `nodes[name]` (default "switch"). A
    medium without a capacity in `media` gets the largest bandwidth among its links."""
    parts = _Parts(devices)
    for i, raw in enumerate(links):
        where = f"network.links[{i}]"
        for key in raw:
            if key not in _LINK_KEYS:
                raise ScenarioError(f"{where}.{key}", raw[key], f"keys are {', '.join(_LINK_KEYS)}")
        for key in ("a", "b", "bandwidth"):
            if key not in raw:
                raise ScenarioError(where, dict(raw), f"'{key}' is required")
        for end in (raw["a"], raw["b"]):
            parts.nodes.setdefault(end, (nodes or {}).get(end, "switch"))
        back = raw.get("bandwidth_back")
        link = LinkSpec(
            raw["a"], raw["b"], units.parse(raw["bandwidth"], "bandwidth", f"{where}.bandwidth"),
            units.parse(raw.get("latency", 0.0), "time", f"{where}.latency"),
            raw.get("kind", "ethernet"), raw.get("medium"),
            None if back is None else units.parse(back, "bandwidth", f"{where}.bandwidth_back"))
        parts.links.append(link)
        if link.medium is not None:
            given = (media or {}).get(link.medium)
            widest = max(parts.media.get(link.medium, 0.0), link.bandwidth,
                         link.bandwidth_back or 0.0)
            parts.media[link.medium] = (widest if given is None
                                        else _bw(given, f"media.{link.medium}"))
    return parts.build(overhead)


Topology = Callable[..., Network]          # (devices, **params) -> Network

#: How flows share a bottleneck: every flow alike (max-min), or in proportion to
#: 1 / its route's latency (simdl.sim.sharing).
SHARING = ("maxmin", "rtt")


def calibrated(network: Network, sharing: str = "maxmin", bandwidth_factor: float = 1.0,
               latency_factor: float = 1.0) -> Network:
    """`network` with every link's and medium's bandwidth times `bandwidth_factor`, every
    link's latency times `latency_factor` (the per-message overhead is not network
    latency: it stays), and its `sharing` model set: a new Network, or `network` itself
    with the defaults.

    SimGrid's network/bandwidth-factor and network/latency-factor (SimGrid 3.32,
    src/surf/network_cm02.cpp:355-383): a transfer's rate is its max-min share times
    the bandwidth factor, which is its share of bandwidths scaled by it (max-min
    scales with capacity), and the latency it waits is its route's times the latency
    factor. SimGrid weighs `rtt` sharing by the unscaled latency; one factor on every
    flow's weight changes no share.
    """
    if sharing not in SHARING:
        raise ScenarioError("network.sharing", sharing, f"choose one of: {', '.join(SHARING)}")
    for name, factor in (("bandwidth_factor", bandwidth_factor),
                         ("latency_factor", latency_factor)):
        if isinstance(factor, bool) or not 0 < factor < float("inf"):
            raise ScenarioError(f"network.{name}", factor, "a finite factor > 0 (1: as built)")
    if (sharing, bandwidth_factor, latency_factor) == ("maxmin", 1.0, 1.0):
        return network
    if sharing == "rtt":
        flat = [link for link in network.links if not link.latency > 0]
        if flat:
            raise ScenarioError("network.sharing", sharing, "maxmin, or rtt when every link "
                                f"has a latency > 0 (link {flat[0].a}-{flat[0].b} has 0 s)")
    scaled = [replace(link, bandwidth=link.bandwidth * bandwidth_factor,
                      latency=link.latency * latency_factor,
                      bandwidth_back=None if link.bandwidth_back is None
                      else link.bandwidth_back * bandwidth_factor)
              for link in network.links]
    media = {r: c * bandwidth_factor for r, c in network.capacity.items() if ">" not in r}
    return Network(dict(network.graph.nodes(data="kind")), scaled, media, network.overhead,
                   sharing)


TOPOLOGIES: dict[str, Topology] = {
    "wifi_star": wifi_star,
    "home": home,
    "p2p_mesh": p2p_mesh,
    "edge": edge,
    "cloud": cloud,
    "links": links,
}
