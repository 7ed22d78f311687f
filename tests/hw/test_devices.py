"""Devices: the shipped catalogue, the roofline kernel time, overrides and the power model."""
import copy
import math
import pickle

import pytest

from simdl.errors import PlanError, ScenarioError
from simdl.hw import catalogue
from simdl.hw.devices import (DEVICE_TYPES, DTYPES, DeviceSpec, UnitSpec, background_at,
                              best_unit, catalogue_frame, device_power, kernel_time,
                              load_catalogue, make_device)

REQUIRED = ("phone_flagship", "phone_midrange", "phone_lowend", "tablet", "smartwatch",
            "smart_tv", "laptop", "desktop_pc", "car_head_unit", "home_hub", "edge_server",
            "cloud_gpu")
MAINS = ("smart_tv", "desktop_pc", "car_head_unit", "home_hub", "edge_box", "edge_server",
         "cloud_gpu", "sbc_rpi4", "sbc_rpi5", "mac_mini_m4", "desktop_rtx4090")
SOURCE_KINDS = ("spec-peak", "measured", "estimate")


def toy(background=0.0, overhead=0.0):
    """1 GFLOP/s fp32 and 4 GOP/s int8 CPU at efficiency 0.5; an int8-only NPU; 100 MB/s."""
    cpu = UnitSpec(kind="cpu", peak={"fp32": 1e9, "int8": 4e9}, efficiency=0.5,
                   overhead=overhead, active_power=2.0)
    npu = UnitSpec(kind="npu", peak={"int8": 8e9}, efficiency=0.25, overhead=0.0,
                   active_power=3.0)
    return DeviceSpec(type="toy", label="toy device", units={"cpu": cpu, "npu": npu},
                      memory=1e6, mem_bw=1e8, idle_power=1.0, radio_tx_power=0.5,
                      radio_rx_power=0.25, battery=None, background=background,
                      interfaces={"wifi": 1e6})


def numeric_fields(spec):
    """Dotted paths of every figure of a spec, as the catalogue's sources name them."""
    paths = []
    for name, unit in spec.units.items():
        paths += [f"units.{name}.peak.{dtype}" for dtype in unit.peak]
        paths += [f"units.{name}.{f}" for f in ("efficiency", "overhead", "active_power")]
        paths += [f"units.{name}.{f}" for f in ("mem_bw", "memory")
                  if getattr(unit, f) is not None]
        paths += [f"units.{name}.sparsity.{pattern}.{dtype}"
                  for pattern, factors in unit.sparsity.items() for dtype in factors]
    paths += ["memory", "mem_bw", "storage_bw", "idle_power", "radio_tx_power", "radio_rx_power", "background"]
    paths += [f"interfaces.{k}" for k in spec.interfaces]
    if spec.battery is not None:
        paths.append("battery")
    return paths


def source_for(spec, path):
    """The entry for the path or the nearest group above it (units.cpu.peak covers .fp32)."""
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in spec.sources:
            return spec.sources[".".join(parts[:n])]
    return None


# --- the shipped catalogue ---------------------------------------------------------------

def test_catalogue_holds_the_required_types_sorted():
    assert len(DEVICE_TYPES) >= 12
    assert set(REQUIRED) <= set(DEVICE_TYPES)
    assert DEVICE_TYPES == tuple(sorted(load_catalogue()))


def test_catalogue_is_parsed_once_and_callers_get_their_own_dict():
    first, second = load_catalogue(), load_catalogue()
    assert first is not second and first["tablet"] is second["tablet"]


@pytest.mark.parametrize("type", DEVICE_TYPES)
def test_every_figure_has_a_source_with_kind_source_and_date(type):
    spec = load_catalogue()[type]
    for path in numeric_fields(spec):
        text = source_for(spec, path)
        assert text is not None, f"{type}: no source for {path}"
        kind, *middle, retrieved = [p.strip() for p in text.split(";")]
        assert kind in SOURCE_KINDS and all(middle) and retrieved, f"{type}.{path}: {text}"


@pytest.mark.parametrize("type", DEVICE_TYPES)
def test_every_source_names_a_real_field(type):
    spec = load_catalogue()[type]
    fields = numeric_fields(spec) + ["battery"]
    for key in spec.sources:
        assert any(f == key or f.startswith(key + ".") for f in fields), f"{type}: {key}"


@pytest.mark.parametrize("type", DEVICE_TYPES)
def test_figures_are_sane_and_every_device_runs_fp32(type):
    spec = load_catalogue()[type]
    assert any("fp32" in u.peak for u in spec.units.values())
    for unit in spec.units.values():
        assert unit.kind in ("cpu", "gpu", "npu") and set(unit.peak) <= set(DTYPES)
        assert all(v > 0 for v in unit.peak.values())
        assert 0 < unit.efficiency <= 1 and unit.overhead >= 0 and unit.active_power >= 0
    assert spec.memory > 0 and spec.mem_bw > 0 and spec.idle_power >= 0
    assert spec.radio_tx_power >= 0 and spec.radio_rx_power >= 0
    assert 0 <= background_at(spec, 0.0) < 1
    assert spec.interfaces and all(v > 0 for v in spec.interfaces.values())
    assert (spec.battery is None) == (type in MAINS)
    assert spec.battery is None or spec.battery > 0


def test_a_source_must_read_kind_source_retrieved():
    raw = copy.deepcopy(catalogue.read()["smartwatch"])
    raw["sources"]["memory"] = "guess"
    with pytest.raises(ScenarioError, match=r"^catalogue\.smartwatch\.sources\.memory: 'guess' "
                                            r"is not valid; write 'kind; source; retrieved' "
                                            r"with kind one of spec-peak, measured, estimate"):
        catalogue.parse_device(raw, "catalogue.smartwatch")


def test_a_device_must_say_battery_null_to_be_mains_powered():
    raw = copy.deepcopy(catalogue.read()["smart_tv"])
    del raw["battery"]
    with pytest.raises(ScenarioError, match=r"^catalogue\.smart_tv\.battery: None is not valid; "
                                            r"required: .*null for mains power$"):
        catalogue.parse_device(raw, "catalogue.smart_tv")


def test_catalogue_frame_has_one_row_per_type_with_the_best_units():
    frame = catalogue_frame().set_index("type")
    assert tuple(frame.index) == DEVICE_TYPES
    assert frame.loc["phone_flagship", "int8_unit"] == "npu"
    assert frame.loc["phone_flagship", "int8_TOPS"] == 16.0
    assert math.isnan(frame.loc["cloud_gpu", "battery_Wh"])


# --- kernel time ---------------------------------------------------------------------------

def test_compute_bound_kernel_takes_flops_over_effective_peak():
    """1 GFLOP at 1 GFLOP/s x 0.5 = 2 s; its 1 MB at 100 MB/s would take only 10 ms."""
    assert kernel_time(toy(), "cpu", 1e9, 1e6) == 2.0


def test_memory_bound_kernel_takes_bytes_over_bandwidth():
    """1 MFLOP is 2 ms of compute, but 1 GB at 100 MB/s is 10 s."""
    assert kernel_time(toy(), "cpu", 1e6, 1e9) == 10.0


def test_int8_kernel_uses_the_int8_rate():
    """int8 peak 4 GOP/s x 0.5 = 2 GOP/s: 1 GOP takes 0.5 s (fp32 would take 2 s)."""
    assert kernel_time(toy(), "cpu", 1e9, 0.0, dtype="int8") == 0.5


def test_overhead_is_added_once_per_kernel():
    """2 s of compute + 1 ms launch = 2.001 s."""
    assert kernel_time(toy(overhead=1e-3), "cpu", 1e9, 0.0) == 2.001


def test_background_load_of_a_quarter_slows_by_four_thirds():
    """Other apps take 25%: 2 s of work takes 2 / 0.75 = 8/3 s."""
    assert kernel_time(toy(background=0.25), "cpu", 1e9, 0.0) == pytest.approx(8 / 3, rel=1e-15)


def test_background_schedule_applies_the_step_in_force_when_the_kernel_starts():
    """Load 0 until 10 s, 0.5 until 20 s, then 0.2: a 2 s kernel takes 2, 4, 4, 2.5 s."""
    spec = toy(background=((0.0, 0.0), (10.0, 0.5), (20.0, 0.2)))
    assert [background_at(spec, t) for t in (0.0, 9.99, 10.0, 25.0)] == [0.0, 0.0, 0.5, 0.2]
    times = [kernel_time(spec, "cpu", 1e9, 0.0, t=t) for t in (5.0, 10.0, 15.0, 25.0)]
    assert times == [2.0, 4.0, 4.0, 2.5]


def test_a_unit_with_its_own_memory_uses_its_bandwidth():
    """A host CPU beside VRAM: 1 GB at its own 50 MB/s is 20 s, not 10 s at the device's."""
    cpu = UnitSpec(kind="cpu", peak={"fp32": 1e9}, efficiency=1.0, overhead=0.0,
                   active_power=1.0, mem_bw=5e7)
    spec = DeviceSpec(type="box", label="box", units={"cpu": cpu}, memory=1e9, mem_bw=1e8,
                      idle_power=0.0, radio_tx_power=0.0, radio_rx_power=0.0, battery=None,
                      background=0.0, interfaces={})
    assert kernel_time(spec, "cpu", 0.0, 1e9) == 20.0


def test_unsupported_dtype_names_the_peak_field_and_the_dtypes_the_unit_has():
    with pytest.raises(PlanError, match=r"^devices\.toy\.units\.npu\.peak: 'fp32' is not valid; "
                                        r"this unit runs int8$"):
        kernel_time(toy(), "npu", 1e9, 0.0, dtype="fp32")
    with pytest.raises(PlanError, match=r"^devices\.phone_flagship\.units\.npu\.peak: 'fp32' "
                                        r"is not valid; this unit runs fp16, int8$"):
        kernel_time(load_catalogue()["phone_flagship"], "npu", 1e9, 0.0)


def test_unknown_unit_names_the_units_the_device_has():
    with pytest.raises(PlanError, match=r"^devices\.toy\.units: 'gpu' is not valid; "
                                        r"choose one of: cpu, npu$"):
        kernel_time(toy(), "gpu", 1e9, 0.0)


def test_best_unit_is_the_highest_effective_rate():
    """int8: npu 8 x 0.25 = 2 GOP/s ties cpu 4 x 0.5 = 2, so the name decides: cpu."""
    assert best_unit(toy(), "fp32") == "cpu"
    assert best_unit(toy(), "int8") == "cpu"
    phone = load_catalogue()["phone_flagship"]
    assert (best_unit(phone, "fp32"), best_unit(phone, "int8")) == ("gpu", "npu")
    with pytest.raises(PlanError, match=r"^devices\.toy\.units: 'fp16' is not valid; no unit "
                                        r"runs it \(cpu: fp32, int8; npu: int8\)$"):
        best_unit(toy(), "fp16")


# --- power -----------------------------------------------------------------------------------

def test_device_power_adds_busy_units_once_and_the_radio():
    """idle 1 + cpu 2 + npu 3 + tx 0.5 = 6.5 W; receiving adds 0.25 W; idle alone is 1 W."""
    assert device_power(toy(), ["cpu", "npu", "cpu"], tx=True, rx=False) == 6.5
    assert device_power(toy(), ["npu"], tx=False, rx=True) == 4.25
    assert device_power(toy(), [], tx=False, rx=False) == 1.0


# --- specs are values --------------------------------------------------------------------------

def test_specs_are_frozen_all_the_way_down_hashable_and_picklable():
    spec = load_catalogue()["phone_flagship"]
    with pytest.raises(TypeError):
        spec.units["npu"].peak["int8"] = 1.0
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert hash(spec) == hash(pickle.loads(pickle.dumps(spec)))
    assert toy().units["cpu"].peak == {"fp32": 1e9, "int8": 4e9}


# --- make_device -----------------------------------------------------------------------------

def test_make_device_without_overrides_is_the_catalogue_device():
    assert make_device("tablet") is load_catalogue()["tablet"]


def test_nested_and_dotted_overrides_take_unit_strings():
    """26 TOPS, 4 GiB, 15 Wh = 54 kJ, 300 Mbps = 37.5 MB/s, 50 us, 2 W; fp16 is kept."""
    spec = make_device("phone_flagship", {
        "units": {"npu": {"peak": {"int8": "26TOPS"}}},
        "memory": "4GiB", "battery": "15Wh", "interfaces.wifi": "300Mbps",
        "units.cpu.overhead": "50us", "idle_power": "2W"}, where="devices.p1")
    assert spec.units["npu"].peak == {"fp16": 8e12, "int8": 26e12}
    assert (spec.memory, spec.battery, spec.idle_power) == (4 * 2**30, 54000.0, 2.0)
    assert spec.interfaces["wifi"] == 37.5e6
    assert spec.units["cpu"].overhead == pytest.approx(50e-6, rel=1e-15)
    assert spec.sources["units.npu.peak.int8"].startswith(
        "override; set at devices.p1.units.npu.peak.int8")
    assert load_catalogue()["phone_flagship"].units["npu"].peak["int8"] == 16e12


def test_null_overrides_remove_a_unit_or_interface_and_make_battery_mains():
    spec = make_device("phone_flagship", {"units.npu": None, "interfaces": {"cellular": None},
                                          "battery": None})
    assert sorted(spec.units) == ["cpu", "gpu"] and "cellular" not in spec.interfaces
    assert spec.battery is None


def test_a_whole_new_unit_can_be_added():
    """A 13 TOPS NPU at 0.3 (3.9 TOP/s) beats the iGPU's 8.6 x 0.4 = 3.44; kind is the name."""
    spec = make_device("laptop", {"units": {"npu": {
        "peak": {"int8": "13TOPS"}, "efficiency": 0.3, "overhead": "100us", "active_power": "2W"}}})
    assert spec.units["npu"].kind == "npu" and spec.units["npu"].peak == {"int8": 13e12}
    assert best_unit(spec, "int8") == "npu"


def test_background_schedule_override_takes_times_with_units():
    spec = make_device("laptop", {"background": [[0, 0.1], ["10min", "50%"]]})
    assert spec.background == ((0.0, 0.1), (600.0, 0.5))


def test_unknown_type_lists_the_types():
    with pytest.raises(ScenarioError, match=r"^devices\.type: 'phone_flagshp' is not valid; "
                                            r"choose one of: car_head_unit, cloud_gpu, .*tablet$"):
        make_device("phone_flagshp")


@pytest.mark.parametrize("overrides, message", [
    ({"memroy": "4GiB"},
     r"^devices\.t1\.memroy: '4GiB' is not valid; no such field; a device has: .*, memory, "),
    ({"units.npu.pek": "1TOPS"},
     r"^devices\.t1\.units\.npu\.pek: '1TOPS' is not valid; no such field; a unit has: "
     r"active_power, efficiency, kind, mem_bw, memory, overhead, peak, sparsity$"),
    ({"units.npu.peak.int4": "52TOPS"},
     r"^devices\.t1\.units\.npu\.peak\.int4: '52TOPS' is not valid; no such dtype; "
     r"choose one of: fp32, fp16, int8$"),
    ({"interfaces.lora": "1Mbps"},
     r"^devices\.t1\.interfaces\.lora: '1Mbps' is not valid; no such interface; choose one of: "),
    ({"units.nup.peak.int8": "1TOPS"},
     r"^devices\.t1\.units\.nup: \{'peak': '1TOPS'\} is not valid; no unit 'nup' here "
     r"\(it has cpu, gpu, npu\); a new unit needs kind, efficiency, overhead, active_power"),
    ({"memory.size": "4GiB"},
     r"^devices\.t1\.memory\.size: '4GiB' is not valid; memory is a single value"),
])
def test_unknown_fields_name_the_path_the_value_and_what_is_allowed(overrides, message):
    with pytest.raises(ScenarioError, match=message) as err:
        make_device("tablet", overrides, where="devices.t1")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    ({"memory": "-4GiB"}, r"^devices\.memory: '-4GiB' is not valid; must be a size of more "
                          r"than zero, e\.g\. '4GiB'$"),
    ({"units.cpu.efficiency": 1.5}, r"^devices\.units\.cpu\.efficiency: 1\.5 is not valid; "
                                    r"a fraction in \(0, 1\]"),
    ({"units.cpu.efficiency": 0}, r"^devices\.units\.cpu\.efficiency: 0 is not valid; "),
    ({"background": 1.0}, r"^devices\.background: 1\.0 is not valid; a fraction in \[0, 1\)"),
    ({"background": [["5s", 0.1]]}, r"^devices\.background\[0\]\[0\]: '5s' is not valid; the "
                                   r"first step starts at 0"),
    ({"background": [[0, 0.1], [5, 0.2]]}, r"^devices\.background\[1\]\[0\]: 5 is not valid; "
                                           r"write the unit: a time such as"),
    ({"memory": "4 parsecs"}, r"^devices\.memory: '4 parsecs' is not valid; write a size .*4GiB"),
    ({"units.npu.overhead": "-1us"}, r"^devices\.units\.npu\.overhead: '-1us' is not valid; "
                                     r"must be a time of zero or more"),
])
def test_bad_values_name_the_path_the_value_and_the_range(overrides, message):
    with pytest.raises(ScenarioError, match=message):
        make_device("tablet", overrides)
