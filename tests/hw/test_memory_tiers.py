"""Memory tiers on the device side: storage read bandwidth on every device, a discrete
GPU's own memory (VRAM) apart from the device's RAM, and the home-cluster devices."""
import copy
import math

import pytest

from simdl.errors import ScenarioError
from simdl.hw import catalogue
from simdl.hw import topologies as topo
from simdl.hw.devices import (DEVICE_TYPES, catalogue_frame, kernel_time, load_catalogue,
                              make_device)

GiB = 2**30
HOME_CLUSTER = ("sbc_rpi4", "sbc_rpi5", "mac_mini_m4", "laptop_gaming", "desktop_rtx4090")
#: The entries from before unit memory: their device-level memory is still the VRAM's.
OLDER_DGPU = ("desktop_pc", "edge_server", "cloud_gpu")


@pytest.mark.parametrize("type", DEVICE_TYPES)
def test_every_device_has_a_storage_read_bandwidth_with_a_source(type):
    spec = load_catalogue()[type]
    assert spec.storage_bw is not None and 0 < spec.storage_bw < spec.mem_bw
    assert spec.sources["storage_bw"].split(";")[0] in ("spec-peak", "measured", "estimate")


def test_storage_figures_are_the_catalogue_s_in_bytes_per_second():
    specs = load_catalogue()
    assert {t: specs[t].storage_bw for t in ("sbc_rpi4", "sbc_rpi5", "mac_mini_m4",
                                             "phone_flagship", "phone_lowend")} == {
        "sbc_rpi4": 46e6, "sbc_rpi5": 450e6, "mac_mini_m4": 2.79e9,
        "phone_flagship": 2.1e9, "phone_lowend": 280e6}


def test_the_home_cluster_devices_are_in_the_catalogue():
    assert set(HOME_CLUSTER) <= set(DEVICE_TYPES)


def test_board_cpu_peaks_are_cores_times_clock_times_ops_per_cycle():
    """Pi 4: 4 A72 x 1.8 GHz x 8 fp32 / 16 int8; Pi 5: 4 A76 x 2.4 GHz x 16 / 32 / 64."""
    specs = load_catalogue()
    assert specs["sbc_rpi4"].units["cpu"].peak == {"fp32": 4 * 1.8e9 * 8, "int8": 4 * 1.8e9 * 16}
    assert specs["sbc_rpi5"].units["cpu"].peak == pytest.approx(
        {"fp32": 4 * 2.4e9 * 16, "fp16": 4 * 2.4e9 * 32, "int8": 4 * 2.4e9 * 64}, rel=1e-15)
    assert specs["sbc_rpi4"].mem_bw == 3200e6 * 4
    assert specs["sbc_rpi5"].mem_bw == pytest.approx(4267e6 * 4, rel=1e-15)
    assert set(specs["sbc_rpi4"].units) == {"cpu"}
    assert specs["sbc_rpi4"].interfaces["ethernet"] == 940e6 / 8


def test_ada_tensor_rates_are_four_and_eight_times_fp32():
    """The gaming laptop's fp16/int8 are derived from fp32 by the RTX 4090's ratios."""
    gpu = load_catalogue()["laptop_gaming"].units["gpu"]
    assert gpu.peak["fp16"] / gpu.peak["fp32"] == pytest.approx(4, rel=1e-12)
    assert gpu.peak["int8"] / gpu.peak["fp32"] == pytest.approx(8, rel=1e-12)
    big = load_catalogue()["desktop_rtx4090"].units["gpu"].peak
    assert big["fp16"] / big["fp32"] == pytest.approx(4, rel=1e-3)
    assert big["int8"] / big["fp32"] == pytest.approx(8, rel=1e-3)


@pytest.mark.parametrize("type, ram, vram, ram_bw, vram_bw", [
    ("laptop_gaming", 10 * GiB, 7 * GiB, 83.2e9, 256e9),
    ("desktop_rtx4090", 24 * GiB, 22 * GiB, 96e9, 1008e9),
])
def test_a_discrete_gpu_s_vram_is_apart_from_the_device_s_ram(type, ram, vram, ram_bw, vram_bw):
    """1 GB read by the GPU takes 1e9 / VRAM bandwidth, by the CPU 1e9 / RAM bandwidth."""
    spec = load_catalogue()[type]
    gpu, cpu = spec.units["gpu"], spec.units["cpu"]
    assert (spec.memory, spec.mem_bw) == (ram, ram_bw)
    assert (gpu.memory, gpu.mem_bw) == (vram, vram_bw)
    assert cpu.memory is None and cpu.mem_bw is None
    spec = make_device(type, {"units.gpu.overhead": 0, "units.cpu.overhead": 0,
                              "background": 0})
    assert kernel_time(spec, "gpu", 0.0, 1e9) == 1e9 / vram_bw
    assert kernel_time(spec, "cpu", 0.0, 1e9) == 1e9 / ram_bw


def test_unified_memory_devices_have_no_unit_memory():
    for type in ("mac_mini_m4", "edge_box", "laptop", "phone_flagship", "sbc_rpi5"):
        assert all(u.memory is None for u in load_catalogue()[type].units.values()), type


@pytest.mark.parametrize("type", OLDER_DGPU)
def test_older_gpu_entries_keep_their_gpu_in_the_device_memory_so_nothing_changes(type):
    """Their device-level memory/mem_bw are the VRAM's; a GPU with a mem_bw of its own would
    stop following a scenario's `mem_bw` override."""
    spec = make_device(type, {"mem_bw": "1000TB/s", "background": 0})
    assert spec.units["gpu"].memory is None and spec.units["gpu"].mem_bw is None
    assert kernel_time(spec, "gpu", 0.0, 1e15) == 1.0 + spec.units["gpu"].overhead


@pytest.mark.parametrize("type", DEVICE_TYPES)
def test_every_unit_with_its_own_memory_has_its_own_bandwidth(type):
    for unit in load_catalogue()[type].units.values():
        assert unit.memory is None or (unit.memory > 0 and unit.mem_bw is not None)


def test_overriding_ram_leaves_vram_alone_and_the_other_way_round():
    ram = make_device("laptop_gaming", {"memory": "12GiB", "storage_bw": "7GB/s"},
                      where="devices.lg")
    assert (ram.memory, ram.units["gpu"].memory, ram.storage_bw) == (12 * GiB, 7 * GiB, 7e9)
    assert ram.sources["storage_bw"].startswith("override; set at devices.lg.storage_bw")
    vram = make_device("laptop_gaming", {"units": {"gpu": {"memory": "6GiB",
                                                            "mem_bw": "192GB/s"}}})
    assert (vram.memory, vram.units["gpu"].memory, vram.units["gpu"].mem_bw) == (
        10 * GiB, 6 * GiB, 192e9)
    assert load_catalogue()["laptop_gaming"].units["gpu"].memory == 7 * GiB


def test_a_null_unit_memory_makes_the_unit_work_in_the_device_s_ram():
    spec = make_device("laptop_gaming", {"units.gpu.memory": None})
    assert spec.units["gpu"].memory is None and spec.units["gpu"].mem_bw == 256e9


def test_a_unit_given_memory_of_its_own_needs_its_bandwidth():
    with pytest.raises(ScenarioError, match=r"^devices\.lp\.units\.gpu\.mem_bw: None is not "
                                            r"valid; required with the unit's own memory: "
                                            r"that memory's bandwidth, e\.g\. '256GB/s'"):
        make_device("laptop", {"units.gpu.memory": "2GiB"}, where="devices.lp")
    spec = make_device("laptop", {"units.gpu.memory": "2GiB", "units.gpu.mem_bw": "100GB/s"})
    assert (spec.units["gpu"].memory, spec.units["gpu"].mem_bw) == (2 * GiB, 100e9)


@pytest.mark.parametrize("overrides, message", [
    ({"storage_bw": None}, r"^devices\.storage_bw: None is not valid; required: the "
                           r"storage's sequential read bandwidth, e\.g\. '2GB/s'"),
    ({"storage_bw": "-1GB/s"}, r"^devices\.storage_bw: '-1GB/s' is not valid; must be a "
                               r"bandwidth of more than zero"),
    ({"storage_bw": 0}, r"^devices\.storage_bw: 0 is not valid; must be a bandwidth of more "
                        r"than zero"),
    ({"storage_bw": 2000}, r"^devices\.storage_bw: 2000 is not valid; write the unit: a "
                           r"bandwidth such as"),
    ({"storage_bw": "fast"}, r"^devices\.storage_bw: 'fast' is not valid; "),
    ({"units.gpu.memory": "8 parsecs"}, r"^devices\.units\.gpu\.memory: '8 parsecs' is not "
                                        r"valid; write a size"),
    ({"units.gpu.memory": "0GiB"}, r"^devices\.units\.gpu\.memory: '0GiB' is not valid; must "
                                   r"be a size of more than zero"),
    ({"units.gpu.memory": "8GB/s"}, r"^devices\.units\.gpu\.memory: '8GB/s' is not valid; "),
])
def test_bad_storage_and_unit_memory_name_the_field_the_value_and_what_is_allowed(overrides,
                                                                                   message):
    with pytest.raises(ScenarioError, match=message) as err:
        make_device("laptop_gaming", overrides)
    assert "\n" not in str(err.value)


def test_a_catalogue_entry_without_storage_bw_is_refused():
    raw = copy.deepcopy(catalogue.read()["sbc_rpi4"])
    del raw["storage_bw"]
    with pytest.raises(ScenarioError, match=r"^catalogue\.sbc_rpi4\.storage_bw: None is not "
                                            r"valid; required: the storage's sequential read"):
        catalogue.parse_device(raw, "catalogue.sbc_rpi4")


def test_devices_table_shows_storage_and_vram():
    frame = catalogue_frame().set_index("type")
    assert frame.loc["sbc_rpi4", "storage_GBps"] == 0.046
    assert frame.loc["laptop_gaming", "vram_GiB"] == 7.0
    assert math.isnan(frame.loc["mac_mini_m4", "vram_GiB"])


def test_home_wires_single_board_computers_to_the_router_at_gigabit_goodput():
    """The `home` topology is a gigabit switch for boards: each on its own Ethernet port."""
    pool = {f"pi{i}": load_catalogue()["sbc_rpi5"] for i in range(4)}
    net = topo.home(pool)
    wired = {(link.a, link.b): link for link in net.links if link.a in pool}
    assert set(wired) == {(f"pi{i}", "router") for i in range(4)}
    assert all(link.kind == "ethernet" and link.bandwidth == 940e6 / 8
               for link in wired.values())
