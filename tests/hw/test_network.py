"""Routes, resources and capacities of a Network built from explicit links."""
import pytest

from simdl.errors import PlanError, ScenarioError
from simdl.hw.network import LinkSpec, Network


def _triangle():
    """a-b direct 10 ms; a-c 2 ms + c-b 3 ms = 5 ms; z alone."""
    nodes = {"a": "device", "b": "device", "c": "switch", "z": "device"}
    return Network(nodes, [LinkSpec("a", "b", 1e6, 0.010), LinkSpec("a", "c", 1e6, 0.002),
                           LinkSpec("c", "b", 1e6, 0.003)])


def test_the_route_has_the_lowest_total_latency_and_is_cached():
    net = _triangle()
    route = net.route("a", "b")
    assert route.nodes == ("a", "c", "b")
    assert route.resources == ("a>c", "c>b")
    assert route.latency == 0.002 + 0.003
    assert net.route("a", "b") is route
    assert net.route("b", "a").nodes == ("b", "c", "a")


def test_a_missing_route_names_both_devices():
    with pytest.raises(PlanError, match=r"^network\.route: 'a -> z' is not valid; "
                                        r"no route between a and z in this network$"):
        _triangle().route("a", "z")
    with pytest.raises(PlanError, match="'nobody' is not valid; not a node"):
        _triangle().route("a", "nobody")


def test_equal_latency_routes_are_broken_by_hops_then_node_names():
    """a-x-d and a-w-d both take 2 ms; a-d direct also 2 ms wins on hops. Without the direct
    link, w sorts before x."""
    nodes = {"a": "device", "d": "device", "x": "switch", "w": "switch"}
    square = [LinkSpec("a", "x", 1, 0.001), LinkSpec("x", "d", 1, 0.001),
              LinkSpec("a", "w", 1, 0.001), LinkSpec("w", "d", 1, 0.001)]
    assert Network(nodes, square).route("a", "d").nodes == ("a", "w", "d")
    direct = Network(nodes, square + [LinkSpec("a", "d", 1, 0.002)])
    assert direct.route("a", "d").nodes == ("a", "d")


def test_bad_links_name_the_field():
    with pytest.raises(ScenarioError, match=r"network\.links\[0\]\.bandwidth: 0"):
        Network({"a": "device", "b": "device"}, [LinkSpec("a", "b", 0, 0.0)])
