"""The network: links, shared media, and routes between named nodes.

Knows bytes/s, seconds and routes; knows nothing of layers, plans, the clock (sim/flows.py
shares bandwidth over time) or how a pool is wired (hw/topologies.py builds networks). A
resource is a directed link "u>v" or a shared medium (a Wi-Fi AP's airtime, a P2P channel).
"""
from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import networkx as nx

from simdl.errors import PlanError, ScenarioError


@dataclass(frozen=True)
class LinkSpec:
    """An edge a-b. `bandwidth` is bytes/s in each direction (a->b, and b->a unless
    `bandwidth_back` is set); every flow over the link also consumes `medium`, if any."""

    a: str
    b: str
    bandwidth: float
    latency: float
    kind: str = "ethernet"
    medium: str | None = None
    bandwidth_back: float | None = None


@dataclass(frozen=True)
class Route:
    """Nodes from source to destination, the resources crossed in order (a medium twice
    if two hops share it) and the latency summed over hops (s)."""

    nodes: tuple[str, ...]
    resources: tuple[str, ...]
    latency: float


class Network:
    """A graph of devices and infrastructure, the capacity of every resource, the
    per-message overhead (s) and how flows share a bottleneck (`sharing`: "maxmin", or
    "rtt", `simdl.sim.sharing`). Routes are lowest-latency, then fewest hops, then the
    first sequence of node names in sort order; they are computed once and cached."""

    def __init__(self, nodes: Mapping[str, str], links: Iterable[LinkSpec],
                 media: Mapping[str, float] | None = None, overhead: float = 0.0,
                 sharing: str = "maxmin"):
        media = dict(media or {})
        self.graph = nx.Graph()
        for name, kind in nodes.items():
            if ">" in name:
                raise ScenarioError(f"network.nodes.{name}", name, "node names cannot contain '>'")
            self.graph.add_node(name, kind=kind)
        self.links: tuple[LinkSpec, ...] = tuple(links)
        self.capacity: dict[str, float] = {}
        for i, link in enumerate(self.links):
            _check_link(f"network.links[{i}]", link, self.graph, media)
            self.graph.add_edge(link.a, link.b, link=link)
            self.capacity[f"{link.a}>{link.b}"] = link.bandwidth
            back = link.bandwidth if link.bandwidth_back is None else link.bandwidth_back
            self.capacity[f"{link.b}>{link.a}"] = back
        for name, cap in media.items():
            if not cap > 0:
                raise ScenarioError(f"network.media.{name}", cap, "a capacity must be > 0 bytes/s")
            self.capacity[name] = float(cap)
        if overhead < 0:
            raise ScenarioError("network.overhead", overhead, "must be >= 0 s")
        self.overhead = float(overhead)
        self.sharing = sharing
        self.devices: tuple[str, ...] = tuple(n for n, k in nodes.items() if k == "device")
        self._routes: dict[tuple[str, str], Route] = {}

    def resources(self, link: str) -> tuple[str, ...]:
        """The resources a link's name stands for: a direction `a>b` or a medium itself,
        or both directions of the link between a and b written `a-b` (or `b-a`)."""
        if link in self.capacity:
            return (link,)
        for spec in self.links:
            if link in (f"{spec.a}-{spec.b}", f"{spec.b}-{spec.a}"):
                return f"{spec.a}>{spec.b}", f"{spec.b}>{spec.a}"
        names = [f"{spec.a}-{spec.b}" for spec in self.links]
        names += [name for name in self.capacity if ">" not in name]
        raise PlanError("link", link, "a link a-b (both directions), a direction a>b or a "
                        f"medium; this network has: {', '.join(names)}")

    def route(self, src: str, dst: str) -> Route:
        """The route from src to dst; PlanError if either is unknown or they are apart."""
        found = self._routes.get((src, dst))
        if found is None:
            found = self._routes[(src, dst)] = self._find(src, dst)
        return found

    def _find(self, src: str, dst: str) -> Route:
        for name in (src, dst):
            if name not in self.graph:
                raise PlanError("network.route", name,
                                f"not a node of this network; devices: {', '.join(self.devices)}")
        path = self._path(src, dst)
        if path is None:
            raise PlanError("network.route", f"{src} -> {dst}",
                            f"no route between {src} and {dst} in this network")
        adj = self.graph.adj
        latency, resources = 0.0, []
        for u, v in zip(path, path[1:]):
            link: LinkSpec = adj[u][v]["link"]
            latency += link.latency
            resources.append(f"{u}>{v}")
            if link.medium is not None:
                resources.append(link.medium)
        return Route(path, tuple(resources), latency)

    def _path(self, src: str, dst: str) -> tuple[str, ...] | None:
        # A leaf (a device on one AP or switch) has one way out, so its routes are its hop
        # plus its neighbour's route: a star of 1,000 devices never runs Dijkstra.
        adj = self.graph.adj
        head: tuple[str, ...] = ()
        tail: tuple[str, ...] = ()
        if src != dst and len(adj[src]) == 1:
            head, src = (src,), next(iter(adj[src]))
        if src != dst and len(adj[dst]) == 1:
            tail, dst = (dst,), next(iter(adj[dst]))
        core = self._dijkstra(src, dst)
        return None if core is None else head + core + tail

    def _dijkstra(self, src: str, dst: str) -> tuple[str, ...] | None:
        # Keys (latency, hops, path) make ties fall to the sort order of node names.
        adj = self.graph.adj
        best: dict[str, tuple[float, int, tuple[str, ...]]] = {src: (0.0, 0, (src,))}
        heap = [best[src]]
        settled: dict[str, None] = {}
        while heap:
            latency, hops, path = heapq.heappop(heap)
            u = path[-1]
            if u in settled:
                continue
            if u == dst:
                return path
            settled[u] = None
            for v, data in adj[u].items():
                if v in settled:
                    continue
                key = (latency + data["link"].latency, hops + 1, path + (v,))
                if v not in best or key < best[v]:
                    best[v] = key
                    heapq.heappush(heap, key)
        return None


def _check_link(where: str, link: LinkSpec, graph: nx.Graph, media: Mapping[str, float]) -> None:
    for end in (link.a, link.b):
        if end not in graph:
            raise ScenarioError(f"{where}.a/b", end, "both ends must be nodes of the network")
    if link.a == link.b or graph.has_edge(link.a, link.b):
        raise ScenarioError(where, f"{link.a}-{link.b}", "one link per pair of distinct nodes")
    for name, value in (("bandwidth", link.bandwidth), ("bandwidth_back", link.bandwidth_back)):
        if value is not None and not 0 < value < float("inf"):
            raise ScenarioError(f"{where}.{name}", value, "must be a finite bytes/s > 0")
    if not 0 <= link.latency < float("inf"):
        raise ScenarioError(f"{where}.latency", link.latency, "must be a finite time >= 0 s")
    if link.medium is not None and link.medium not in media:
        raise ScenarioError(f"{where}.medium", link.medium, "give the medium a capacity")
