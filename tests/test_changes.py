"""The scenario's `changes:` section: shapes, values, CSV profiles, FedScale-style traces, names."""
import json

import pytest
import yaml

from simdl import api
from simdl.changes import normalise
from simdl.errors import ScenarioError
from simdl.plan.world import Change, Profile
from simdl.scenario import dump, load, parse

BASE = {"name": "churn", "devices": [{"name": "phone", "type": "phone_flagship"},
                                     {"name": "tv", "type": "smart_tv"},
                                     {"name": "watch", "type": "smartwatch"}],
        "network": {"kind": "home"}, "model": {"name": "mlp"},
        "workload": {"kind": "inference", "requests": 2, "source": "phone"},
        "strategies": ["single"]}


def world(changes, base=None):
    return api.build(parse(BASE | {"changes": changes}, base), timing_only=True, pretrain=False)


def test_every_kind_of_source_becomes_a_change_of_the_world():
    w = world([{"device": "tv", "presence": [[0, 1], [2.5, 0], [6, 1]], "period": 10},
               {"device": "tv", "unit": "gpu", "speed": [[0, 1.0], [3, 0.25], [4, 1.0]]},
               {"link": "phone-ap", "bandwidth": [[0, 1.0], [2, 0.2]], "loss": [[2, 0.05]]},
               {"device": "watch", "availability": {"up": "30s", "down": "10s"}}])
    assert w.changes == (
        Change("presence", "tv", Profile(((0.0, 1.0), (2.5, 0.0), (6.0, 1.0)), 10.0)),
        Change("speed", "tv", Profile(((0.0, 1.0), (3.0, 0.25), (4.0, 1.0))), "gpu"),
        Change("bandwidth", "phone-ap", Profile(((0.0, 1.0), (2.0, 0.2)))),
        Change("loss", "phone-ap", Profile(((2.0, 0.05),))),
        Change("availability", "watch", up=30.0, down=10.0))


def test_a_scenario_without_changes_dumps_as_before():
    assert "changes" not in dump(parse(BASE))
    assert world([]).changes == () and api.build(parse(BASE), timing_only=True,
                                                 pretrain=False).changes == ()


def test_a_csv_profile_is_read_beside_the_scenario_and_the_resolved_scenario_holds_it(tmp_path):
    (tmp_path / "tv.csv").write_text("time,value\n0,1\n2.5,0\n6,1\n")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(BASE | {"changes": [{"device": "tv",
                                                        "presence": {"csv": "tv.csv"}}]}))
    sc = load(path)
    assert sc.changes == [{"device": "tv", "presence": [[0.0, 1.0], [2.5, 0.0], [6.0, 1.0]]}]
    assert parse(dump(sc)) == sc  # whole without the file: read from anywhere


FEDSCALE = {"7": {"duration": 60, "active": [0, 40], "inactive": [10, 60], "finish_time": 60,
                  "model": "SM-G960F"},
            "3": {"active": [5, 20, 30], "inactive": [20, 25, 50], "finish_time": 100}}


def test_a_fedscale_trace_maps_its_clients_in_order_onto_the_listed_devices(tmp_path):
    """Client 7: online 0-10 and 40-60 of every 60 s (ends at finish_time: no step).
    Client 3: 5-25 (two spans that touch), 30-50 of every 100 s, gone from 0."""
    (tmp_path / "clients.json").write_text(json.dumps(FEDSCALE))
    w = world([{"devices": ["tv", "watch"], "trace": "clients.json"}], tmp_path)
    assert w.changes == (
        Change("presence", "tv", Profile(((0.0, 1.0), (10.0, 0.0), (40.0, 1.0)), 60.0)),
        Change("presence", "watch", Profile(((0.0, 0.0), (5.0, 1.0), (25.0, 0.0), (30.0, 1.0),
                                             (50.0, 0.0)), 100.0)))


def test_the_same_trace_as_csv_gives_the_same_changes(tmp_path):
    lines = ["client,active,inactive,finish_time"]
    lines += [f"{c},{a},{i},{t['finish_time']}" for c, t in FEDSCALE.items()
              for a, i in zip(t["active"], t["inactive"])]
    (tmp_path / "clients.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "clients.json").write_text(json.dumps(FEDSCALE))
    entry = {"devices": ["tv", "watch"]}
    assert (world([entry | {"trace": "clients.csv"}], tmp_path).changes
            == world([entry | {"trace": "clients.json"}], tmp_path).changes)


@pytest.mark.parametrize("entry, where, allowed", [
    ({"device": "tv", "presence": [[0, 1], [2, 0.5]]}, r"\.presence\[1\]\[1\]",
     r"presence: 1 \(here\) or 0 \(gone\)"),
    ({"device": "tv", "presence": [[0, True]]}, r"\.presence\[0\]\[1\]", "presence"),
    ({"device": "tv", "presence": [[-1, 1]]}, r"\.presence\[0\]\[0\]", "a time >= 0 s"),
    ({"device": "tv", "presence": [[0, 1], [0, 0]]}, r"\.presence\[1\]\[0\]", "later than"),
    ({"device": "tv", "presence": []}, r"\.presence", "a list of"),
    ({"device": "tv", "presence": [[0, 1, 2]]}, r"\.presence\[0\]", r"a \(time s, value\) pair"),
    ({"device": "tv", "presence": [[0, 1], [5, 0]], "period": 5}, r"\.period",
     r"longer than the profile's last \(5 s\)"),
    ({"link": "phone-ap", "loss": [[0, 1.0]]}, r"\.loss\[0\]\[1\]", r"in \[0, 1\)"),
    ({"link": "phone-ap", "bandwidth": [[0, -1]]}, r"\.bandwidth\[0\]\[1\]", ">= 0"),
    ({"device": "tv", "bandwidth": [[0, 1]]}, r"\.bandwidth", "allowed keys: device"),
    ({"device": "tv", "link": "phone-ap"}, r"", "one of device, link or devices"),
    ({"device": "tv"}, r"", "say what changes: one of presence, speed, availability"),
    ({"device": "tv", "unit": "gpu", "presence": [[0, 1]]}, r"\.unit", "beside a speed"),
    ({"device": "tv", "availability": {"up": 10}}, r"\.availability", "up: mean s present"),
    ({"device": "tv", "availability": {"up": 10, "down": 0}}, r"\.availability\.down", "> 0 s"),
    ({"device": "tv", "presence": [[0, 1]], "availability": {"up": 1, "down": 1}},
     r"\.availability", "one of presence or availability"),
    ({"device": "tv", "presence": {"csv": "missing.csv"}}, r"\.presence\.csv",
     r"a readable CSV file \(FileNotFoundError\)"),
    ({"devices": ["tv"], "trace": "t.txt"}, r"\.trace", r"ending \.json or \.csv"),
])
def test_bad_input_names_its_field_its_value_and_what_is_allowed(entry, where, allowed):
    with pytest.raises(ScenarioError, match=rf"^changes\[0\]{where}: .* is not valid; .*{allowed}"):
        parse(BASE | {"changes": [entry]})


def test_one_presence_source_per_device():
    with pytest.raises(ScenarioError, match=r"^changes\[1\]\.device: 'tv' .*one presence source "
                                            r"per device \(changes\[0\]\.device drives it"):
        world([{"device": "tv", "presence": [[1, 0]]},
               {"device": "tv", "availability": {"up": 1, "down": 1}}])


def test_a_trace_with_fewer_clients_than_devices_or_a_bad_line_is_refused(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps({"1": FEDSCALE["7"]}))
    with pytest.raises(ScenarioError, match=r"it has 1, the entry lists 2 devices"):
        world([{"devices": ["tv", "watch"], "trace": "one.json"}], tmp_path)
    (tmp_path / "bad.csv").write_text("client,active,inactive,finish_time\n1,0,5\n")
    with pytest.raises(ScenarioError, match=r"bad\.csv:2: '1,0,5' is not valid; client,active"):
        world([{"devices": ["tv"], "trace": "bad.csv"}], tmp_path)
    (tmp_path / "cross.json").write_text(json.dumps(
        {"1": {"active": [0, 5], "inactive": [10, 20], "finish_time": 30}}))
    with pytest.raises(ScenarioError, match=r"client 1: \[5\.0, 20\.0\] is not valid; spans"):
        world([{"devices": ["tv"], "trace": "cross.json"}], tmp_path)


def test_normalised_changes_normalise_to_themselves():
    entries = [{"device": "tv", "presence": [[0, 1], [2, 0]], "period": 3},
               {"devices": ["tv"], "trace": [{"presence": [[0, 0], [1, 1]], "period": 5}]}]
    once = normalise(entries)
    assert normalise(once) == once
