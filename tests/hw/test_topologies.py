"""Every topology builder: the nodes, links, media and capacities it makes of a small pool."""
from dataclasses import dataclass, field

import networkx as nx
import pytest

from simdl.errors import ScenarioError, UnitError
from simdl.hw import topologies as topo
from simdl.hw.topologies import TOPOLOGIES


@dataclass
class Dev:
    """Stand-in for DeviceSpec: the builders read only interfaces (and type)."""

    interfaces: dict = field(default_factory=dict)
    type: str = "phone"


def pool():
    return {
        "phone0": Dev({"wifi": 50e6, "p2p": 30e6, "bluetooth": 1e5}),
        "phone1": Dev({"wifi": 40e6, "p2p": 20e6, "bluetooth": 2e5}),
        "tv": Dev({"wifi": 60e6, "ethernet": 100e6, "p2p": 25e6}, "tv"),
        "pc": Dev({"wifi": 80e6, "ethernet": 125e6, "bluetooth": 2e5}, "pc"),
        "watch": Dev({"bluetooth": 1.5e5}, "watch"),
    }


EXAMPLE_PARAMS = {
    "links": {"links": [{"a": d, "b": "sw", "bandwidth": "100Mbps", "latency": "1ms"}
                        for d in pool()]},
}


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_every_topology_connects_a_small_pool_and_routes_all_pairs(name):
    net = TOPOLOGIES[name](pool(), **EXAMPLE_PARAMS.get(name, {}))
    assert net.devices == tuple(pool())
    assert nx.is_connected(net.graph)
    for src in net.devices:
        for dst in net.devices:
            route = net.route(src, dst)
            assert route.nodes[0] == src and route.nodes[-1] == dst
            assert all(r in net.capacity for r in route.resources)
            assert route.latency >= 0


def test_a_medium_is_listed_once_per_hop_that_crosses_it():
    net = topo.wifi_star(pool(), airtime="300Mbps", latency="2ms")
    route = net.route("phone0", "phone1")
    assert route.resources == ("phone0>ap", "ap.air", "ap>phone1", "ap.air")
    assert route.latency == 0.004
    assert net.capacity["ap.air"] == 300e6 / 8
    assert net.capacity["phone1>ap"] == net.capacity["ap>phone1"] == 40e6
    assert net.graph.nodes["ap"]["kind"] == "ap"


def test_wifi_star_tethers_a_bluetooth_only_watch_to_the_first_bluetooth_device():
    net = topo.wifi_star(pool())
    route = net.route("watch", "tv")
    assert route.nodes == ("watch", "phone0", "ap", "tv")
    assert net.capacity["bluetooth:phone0-watch"] == 1e5          # min(1.5e5, 1e5)


def test_wifi_star_reaches_a_cloud_device_from_the_ap_over_broadband():
    """Broadband preset: 100 Mbps up, 500 Mbps down, 10 ms one way."""
    net = topo.wifi_star(pool() | {"gpu": Dev({"ethernet": 1.25e9}, "cloud_gpu")})
    assert net.route("phone0", "gpu").nodes == ("phone0", "ap", "gpu")
    assert (net.capacity["ap>gpu"], net.capacity["gpu>ap"]) == (12.5e6, 62.5e6)
    assert net.route("phone0", "gpu").latency == 0.001 + 0.010


def test_a_device_with_no_usable_interface_is_refused():
    with pytest.raises(ScenarioError, match=r"^devices\.toaster\.interfaces: \[\] is not valid"):
        topo.wifi_star({"toaster": Dev({})})


def test_home_wires_ethernet_devices_to_the_router_and_the_ap_hangs_off_it():
    """phone0 -> tv: Wi-Fi 1 ms, AP-router 50 us, router-tv 50 us; the tv port is its own
    100 MB/s goodput, below the 941 Mbps port."""
    net = topo.home(pool())
    route = net.route("phone0", "tv")
    assert route.nodes == ("phone0", "ap", "router", "tv")
    assert route.resources == ("phone0>ap", "ap.air", "ap>router", "router>tv")
    assert route.latency == 0.001 + 50e-6 + 50e-6
    assert net.capacity["router>tv"] == 100e6
    assert net.capacity["router>pc"] == 941e6 / 8


def test_edge_attaches_the_edge_server_by_fibre_to_the_home_router():
    devices = pool() | {"edge0": Dev({"ethernet": 1.25e9}, "edge_server")}
    net = topo.edge(devices, uplink="1Gbps", uplink_latency="2ms")
    route = net.route("phone0", "edge0")
    assert route.nodes == ("phone0", "ap", "router", "edge0")
    assert net.graph.edges["router", "edge0"]["link"].kind == "fibre"
    assert net.capacity["router>edge0"] == 1e9 / 8
    assert topo.home(devices).route("tv", "edge0").nodes == ("tv", "router", "edge0")
    with pytest.raises(ScenarioError, match=r"^network\.edge_device: 'nas'"):
        topo.edge(devices, edge_device="nas")


def test_without_an_edge_device_the_uplink_ends_at_a_stand_in_node():
    net = topo.edge(pool())
    assert net.graph.nodes["edge"]["kind"] == "edge" and "edge" not in net.devices


def test_cloud_wan_is_asymmetric_with_tens_of_ms_latency():
    """5G preset: 30 Mbps up, 150 Mbps down, 25 ms one way; broadband 100 / 500 Mbps, 10 ms."""
    devices = pool() | {"gpu": Dev({"ethernet": 1.25e9}, "cloud_gpu")}
    net = topo.cloud(devices, wan="5g")
    assert net.capacity["router>gpu"] == 30e6 / 8
    assert net.capacity["gpu>router"] == 150e6 / 8
    assert net.graph.edges["router", "gpu"]["link"].latency == 0.025
    assert net.graph.edges["router", "gpu"]["link"].kind == "cellular"
    wired = topo.cloud(devices, up="200Mbps")
    assert (wired.capacity["router>gpu"], wired.capacity["gpu>router"]) == (25e6, 62.5e6)
    with pytest.raises(ScenarioError, match="choose one of: 5g, broadband"):
        topo.cloud(devices, wan="dialup")


def test_p2p_mesh_prefers_wifi_direct_and_gives_each_link_its_own_medium():
    net = topo.p2p_mesh(pool())
    link = net.graph.edges["phone0", "phone1"]["link"]
    assert (link.kind, link.medium, link.bandwidth) == ("p2p", "p2p:phone0-phone1", 20e6)
    assert net.capacity["p2p:phone0-phone1"] == 20e6
    assert net.graph.edges["phone0", "pc"]["link"].kind == "bluetooth"
    assert net.route("tv", "pc").nodes == ("tv", "phone0", "pc")      # ties: phone0 < phone1
    with pytest.raises(ScenarioError, match=r"network\.pairs\[0\]: 'tv-watch'"):
        topo.p2p_mesh(pool(), pairs=[("tv", "watch")])


def test_explicit_links_take_unit_strings_and_a_medium_defaults_to_its_widest_link():
    net = topo.links({"a": Dev(), "b": Dev()}, links=[
        {"a": "a", "b": "ap", "bandwidth": "80Mbps", "latency": "3ms", "kind": "wifi",
         "medium": "air"},
        {"a": "b", "b": "ap", "bandwidth": "40Mbps", "medium": "air"},
    ], nodes={"ap": "ap"}, overhead="1ms")
    assert net.capacity["air"] == 10e6
    assert net.graph.nodes["ap"]["kind"] == "ap"
    assert net.overhead == 0.001
    assert net.route("a", "b").latency == 0.003
    with pytest.raises(ScenarioError, match=r"network\.links\[0\]\.speed"):
        topo.links({"a": Dev()}, links=[{"a": "a", "b": "s", "speed": 1}])


def test_bad_units_name_the_field():
    with pytest.raises(UnitError, match=r"^network\.airtime: '300 parsecs'"):
        topo.wifi_star(pool(), airtime="300 parsecs")
