"""The flow benchmark's case on SimGrid, for bench/flows.py to compare against.

Run by bench/flows.py as `/usr/bin/python3 bench/simgrid_case.py < CASE.json` (Debian's
python3-simgrid 3.32 is built for Debian's Python, not the project's venv, and needs no
numpy). The case (`case_of` in flows.py) holds the stations, each one's link rate, the
latency of one hop, the airtime, the per-transfer overhead and each station's transfers
as [destination index, bytes]. Prints one JSON object: the wall time of `Engine.run` and,
per station, the simulated time at which each of its transfers ended.

The platform is simdl's `wifi_star`, link for link, in one Full zone: per station a link
"d>ap" and a link "ap>d" (the station's goodput, one Wi-Fi hop of latency), and one link
"ap.air" (the AP's airtime). The route of a transfer is [src>ap, ap.air, ap>dst, ap.air],
simdl's resources in simdl's order: SimGrid's max-min solver counts a link listed twice
with weight 2, as simdl counts a medium crossed twice. A FullZone keeps the list as given
(a StarZone would drop the second ap.air). Each station runs one actor that sends its
transfers one after the other with the blocking host-to-host `Comm.sendto`, no mailbox.

SimGrid's own Wi-Fi links are not used: they charge airtime as bytes / per-station rate
against a capacity of 1 and take no per-station bandwidth, while simdl caps each station
link and shares a medium in bytes/s.

Model options (read in SimGrid 3.32, tag v3.32 = commit e8d2ff8 of github.com/simgrid/
simgrid: src/surf/network_cm02.cpp, src/kernel/resource/NetworkModel.cpp), each set so
that SimGrid computes simdl's plain max-min:
- network/model:CM02. The default LV08 multiplies latencies by 13.01 and bandwidths by
  0.97 and adds 20537 / bandwidth per link to each flow's sharing penalty; CM02 sets
  those to 1, 1 and 0. A flow's share is then divided by its route latency alone, the
  same 2.1 ms for every transfer here, so the weighted max-min is the plain one. CM02
  also bounds each flow by the slowest link of its route, which simdl's link already does.
- network/crosstraffic:0. On by default: every flow also loads its reverse route with
  5 % of its rate (the TCP acks); simdl models no acks.
- network/TCP-gamma:1e30. A flow is bounded by gamma / (2 x latency); at the default
  4 MiB that is about 1 GB/s here, already above every link, and 1e30 keeps it so for
  any rates a reader puts in the case.
- maxmin/precision and surf/precision keep their defaults (1e-5, 1e-9): 1e-12 and 1e-15
  give the same end times to the bit.
- the simdl overhead per transfer (100 us of software cost) has no SimGrid counterpart,
  so it is added to the latency of each "d>ap" link: SimGrid, like simdl, lets a
  transfer take no bandwidth until its latency has passed.

A case with `"kind": "links"` (`links_case_of` in flows.py, for simdl's `sharing: rtt`)
is any simdl network instead: one SimGrid link per simdl resource (a direction "a>b"
with its link's latency, a medium with none), each route simdl's resources in order,
and `bandwidth_factor` and `latency_factor` passed as network/bandwidth-factor and
network/latency-factor. Its route latencies differ, so SimGrid's weights (1 / route
latency, CM02) are simdl's rtt sharing rather than plain max-min.
"""
from __future__ import annotations

import json
import sys
import time

from simgrid import Actor, Comm, Engine, LinkInRoute, NetZone

CONFIG = ["--cfg=network/model:CM02", "--cfg=network/crosstraffic:0",
          "--cfg=network/TCP-gamma:1e30", "--log=root.thres:critical"]


def build(case: dict) -> list:
    """The hosts of `case`, in its order, on the platform described above."""
    zone = NetZone.create_full_zone("pool")
    air = zone.create_link("ap.air", case["airtime"]).seal()
    hosts, up, down = [], [], []
    for name, rate in zip(case["stations"], case["rates"]):
        hosts.append(zone.create_host(name, 1.0).seal())
        up.append(zone.create_link(f"{name}>ap", rate)
                  .set_latency(case["latency"] + case["overhead"]).seal())
        down.append(zone.create_link(f"ap>{name}", rate).set_latency(case["latency"]).seal())
    pairs = {(i, dst) for i, sends in enumerate(case["transfers"]) for dst, _ in sends}
    for i, j in sorted(pairs):
        zone.add_route(hosts[i].netpoint, hosts[j].netpoint, None, None,
                       [LinkInRoute(up[i]), LinkInRoute(air), LinkInRoute(down[j]),
                        LinkInRoute(air)], False)
    zone.seal()
    return hosts


def build_links(case: dict) -> list:
    """The hosts of a "links" case, in its order, with its resources and routes."""
    zone = NetZone.create_full_zone("pool")
    hosts = [zone.create_host(name, 1.0).seal() for name in case["stations"]]
    made = {name: zone.create_link(name, bandwidth).set_latency(latency).seal()
            for name, bandwidth, latency in case["resources"]}
    for i, j, route in case["routes"]:
        zone.add_route(hosts[i].netpoint, hosts[j].netpoint, None, None,
                       [LinkInRoute(made[name]) for name in route], False)
    zone.seal()
    return hosts


def main() -> None:
    case = json.load(sys.stdin)
    factors = [f"--cfg=network/{key.replace('_', '-')}:{case[key]!r}"
               for key in ("bandwidth_factor", "latency_factor") if key in case]
    engine = Engine([sys.argv[0], *CONFIG, *factors])
    hosts = build_links(case) if case.get("kind") == "links" else build(case)
    ends: list[list[float]] = [[] for _ in hosts]

    def sender(i: int) -> None:
        for dst, nbytes in case["transfers"][i]:
            Comm.sendto(hosts[i], hosts[dst], nbytes)
            ends[i].append(Engine.clock)

    for i, host in enumerate(hosts):
        Actor.create(f"sender{i}", host, sender, i)
    t = time.perf_counter()
    engine.run()
    wall = time.perf_counter() - t
    json.dump({"wall": wall, "ends": ends}, sys.stdout)


if __name__ == "__main__":
    main()
