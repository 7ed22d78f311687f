"""The measured-latency table: the shipped file loads, covers enough to calibrate, cites every
row, and a bad row is refused with its line and field named."""
import re

import pandas as pd
import pytest

from simdl.errors import SimdlError
from simdl.hw import catalogue, measured

HEADER = ",".join(measured.COLUMNS)
GOOD = {"device": "sbc_rpi4", "silicon": "Broadcom BCM2711", "match": "same_device",
        "unit": "cpu", "threads": "4", "precision": "fp32", "batch": "1", "runtime": "ncnn",
        "model": "mobilenet_v2", "input": "224x224", "latency_ms": "61.88", "statistic": "avg",
        "source": "Tencent/ncnn@a4d2ea1d44:benchmark/README.md", "retrieved": "2026-12-05",
        "notes": ""}


def table(*rows, comments=("# a comment line",)):
    lines = list(comments) + [HEADER] + [",".join(r[c] for c in measured.COLUMNS) for r in rows]
    return "\n".join(lines) + "\n"


def changed(**fields):
    return {**GOOD, **fields}


@pytest.fixture(scope="module")
def shipped():
    return measured.load()


def test_the_shipped_file_loads_with_typed_columns(shipped):
    assert list(shipped.columns) == list(measured.COLUMNS)
    assert shipped["latency_ms"].dtype == float
    assert shipped["batch"].dtype == int
    assert str(shipped["threads"].dtype) == "Int64"


def test_enough_rows_on_the_calibration_models_over_enough_catalogue_devices(shipped):
    rows = shipped[shipped["model"].isin(measured.CALIBRATION_MODELS)]
    devices = set(rows["device"]) - {""}
    assert len(rows) >= 60
    assert len(devices) >= 8
    assert devices <= set(catalogue.read())


def test_rows_overlap_enough_to_fit_and_hold_out(shipped):
    """A fit per (device, unit, runtime) needs several models in each group, and a held-out
    check needs each common model on several devices."""
    rows = shipped[shipped["model"].isin(measured.CALIBRATION_MODELS) & (shipped["device"] != "")]
    models_per_group = rows.groupby(["device", "unit", "runtime"])["model"].nunique()
    assert (models_per_group >= 3).sum() >= 8
    devices_per_model = rows.groupby("model")["device"].nunique()
    assert devices_per_model["mobilenet_v2"] >= 6
    assert devices_per_model["resnet50"] >= 6


def test_every_row_is_cited_at_a_fixed_version(shipped):
    """A source is a repository at a commit and a path (or a URL), read on a given date."""
    cited = re.compile(r"[\w.-]+/[\w.-]+@[0-9a-f]{7,40}:\S+|https?://\S+")
    assert all(cited.match(s) for s in shipped["source"]), shipped["source"][
        ~shipped["source"].map(lambda s: bool(cited.match(s)))].tolist()
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", d) for d in shipped["retrieved"])


@pytest.mark.parametrize("device, unit, runtime, threads, precision, batch, model, latency", [
    # hand-copied from the sources the rows cite
    ("sbc_rpi4", "cpu", "ncnn", 4, "fp32", 1, "mobilenet_v2", 61.88),
    ("sbc_rpi5", "cpu", "ncnn", 1, "fp16", 1, "resnet50", 89.43),
    ("edge_box", "gpu", "ncnn-vulkan", 1, "fp16", 1, "resnet18", 4.70),
    ("tablet", "cpu", "paddle-lite-2.11-armv8", 1, "int8", 1, "resnet50", 64.50),
    ("car_head_unit", "gpu", "paddle-lite-2.11-opencl", None, "fp16", 1, "mobilenet_v3_small",
     6.79),
    ("phone_midrange", "npu", "tflite-2.17.0-qnn-delegate", None, "int8", 1, "resnet50", 2.612),
    ("edge_server", "gpu", "tensorflow1-ngc20.06", None, "fp32", 8, "resnet50", 23.41),
    ("desktop_rtx4090", "gpu", "pytorch-2.4.0-cu124", None, "fp16", 1024, "deit_tiny", 57.926),
])
def test_figures_match_their_sources(shipped, device, unit, runtime, threads, precision, batch,
                                     model, latency):
    pick = shipped[(shipped["device"] == device) & (shipped["unit"] == unit)
                   & (shipped["runtime"] == runtime) & (shipped["precision"] == precision)
                   & (shipped["model"] == model) & (shipped["batch"] == batch)]
    pick = pick[pick["threads"].isna()] if threads is None else pick[pick["threads"] == threads]
    assert pick["latency_ms"].tolist() == [latency]


def test_a_good_table_loads_and_a_row_on_other_silicon_may_leave_device_empty(tmp_path):
    other = changed(device="", match="", silicon="Rockchip RK3588", threads="", model="vit_b32")
    path = tmp_path / "m.csv"
    path.write_text(table(GOOD, other))
    frame = measured.load(path)
    assert frame["device"].tolist() == ["sbc_rpi4", ""]
    assert frame["latency_ms"].tolist() == [61.88, 61.88]
    assert frame["threads"].isna().tolist() == [False, True]


@pytest.mark.parametrize("field, value", [
    ("device", "phone_x"),            # not a catalogue type
    ("match", ""),                    # a catalogue device needs a match
    ("match", "similar"),
    ("unit", "npu"),                  # sbc_rpi4 has a CPU only
    ("unit", "tpu"),
    ("threads", "1.5"),
    ("threads", "0"),
    ("precision", "bf16"),
    ("batch", "0"),
    ("batch", ""),
    ("model", ""),
    ("model", "MobileNet V2"),
    ("input", "224"),
    ("latency_ms", "0"),
    ("latency_ms", "-3"),
    ("latency_ms", "nan"),
    ("latency_ms", "inf"),
    ("latency_ms", "fast"),
    ("statistic", "mean"),
    ("silicon", ""),
    ("runtime", ""),
    ("source", ""),
    ("retrieved", ""),
    ("retrieved", "2026-13-01"),
    ("retrieved", "05/12/2026"),
])
def test_a_bad_row_is_refused_naming_its_line_and_field(field, value):
    with pytest.raises(SimdlError) as error:
        measured.parse(table(GOOD, changed(**{field: value})), "m.csv")
    # comment line 1, header line 2, the good row line 3, the bad row line 4
    assert error.value.where == f"m.csv line 4.{field}"


def test_match_without_a_device_is_refused():
    with pytest.raises(SimdlError) as error:
        measured.parse(table(changed(device="")), "m.csv")
    assert error.value.where == "m.csv line 3.match"


def test_the_same_measurement_twice_is_refused():
    with pytest.raises(SimdlError, match="same measurement twice") as error:
        measured.parse(table(GOOD, changed(model="resnet18"), GOOD), "m.csv")
    assert error.value.where == "m.csv line 5"


def test_a_missing_column_is_refused():
    text = table(GOOD).replace(",statistic", "").replace(",avg", "")
    with pytest.raises(SimdlError, match="missing columns") as error:
        measured.parse(text, "m.csv")
    assert error.value.value == ["statistic"]


def test_the_frame_is_a_dataframe_with_one_row_per_line():
    frame = measured.parse(table(GOOD, changed(model="resnet18", latency_ms="123.12")))
    assert isinstance(frame, pd.DataFrame)
    assert frame[["model", "latency_ms"]].values.tolist() == [["mobilenet_v2", 61.88],
                                                             ["resnet18", 123.12]]
