"""The event log becomes columns in one pass, and equals the row-by-row DataFrame
(`pd.DataFrame.from_records`) of the same rows; every table, CSV and trace made from
it (the tables on kinds, devices and resources coded as sorted codes) equals the one
made from the row-by-row frame."""
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stand_ins import Joules, Spec, every_kind_log

from simdl.report import tables
from simdl.report.csvtext import FLOAT_FORMAT, csv_text
from simdl.report.trace import trace_text
from simdl.report.columns import Columns, clean
from simdl.sim.recorder import COLUMNS, KINDS, EventLog

SPECS = {d: Spec("phone", ["cpu", "gpu", "npu"]) for d in
         ["phone", "tv", "watch0", "watch1", "pc10", "pc2", "idle"]}
ENERGY = {d: Joules(1.0, 2.0, 0.5) for d in SPECS}


def logged(rows):
    log = EventLog()
    for row in rows:
        log.add(*row)
    return log


def row_by_row(rows):
    return pd.DataFrame.from_records(rows, columns=list(COLUMNS))


@pytest.fixture(params=[0, 1, 2])
def rows(request):
    out = every_kind_log(seed=request.param)
    assert {r[2] for r in out} == set(KINDS)
    return out


def test_the_frame_is_the_row_by_row_frame_with_its_dtypes_fixed(rows):
    pd.testing.assert_frame_equal(logged(rows).frame(), clean(row_by_row(rows)))
    assert [tuple(r) for r in logged(rows).frame().astype(object).itertuples(index=False)] \
        == rows


def test_the_columns_code_kinds_devices_and_resources_as_sorted_text(rows):
    log = Columns(logged(rows).frame())
    for c in ("kind", "device", "resource"):
        coded = log.coded(c)
        assert coded.names == sorted({r[COLUMNS.index(c)] for r in rows})  # as text sorts
        assert coded.of(np.arange(len(rows))).tolist() == [r[COLUMNS.index(c)] for r in rows]


def test_every_table_from_the_columns_equals_the_row_by_row_one(rows):
    def made(events):
        devices = tables.devices_table(events, SPECS, ENERGY, 60.0)
        links = tables.links_table([{"resource": "wifi", "bytes": 8, "busy_time": 1.0}], 60.0)
        return {"requests": tables.requests_table(events), "devices": devices,
                "summary": tables.summary(events, devices, links, 60.0, strategy="s"),
                "waits": tables.memory_waits(clean(events)).to_frame()}

    new, old = made(logged(rows).frame()), made(row_by_row(rows))
    for name in new:
        pd.testing.assert_frame_equal(new[name], old[name], check_dtype=True, obj=name)


def test_the_event_csv_and_trace_from_the_columns_equal_the_row_by_row_ones(rows):
    new, old = logged(rows).frame(), clean(row_by_row(rows))
    assert csv_text(new) == old.to_csv(index=False, float_format=FLOAT_FORMAT,
                                       lineterminator="\n")
    assert trace_text(new, "t") == trace_text(old, "t")


def test_an_empty_log_gives_an_empty_frame_of_the_same_columns():
    frame = EventLog().frame()
    assert list(frame.columns) == list(COLUMNS) and len(frame) == 0
    assert tables.requests_table(frame).empty


def test_the_frame_is_made_again_after_a_row_is_added_and_each_caller_gets_its_own():
    log = logged(every_kind_log(20))
    first = log.frame()
    first.loc[0, "t_start"] = -1.0  # a caller's change stays its own
    assert log.frame().loc[0, "t_start"] != -1.0
    log.add(99.0, 100.0, "compute", "new", "cpu", "late")
    again = log.frame()
    assert len(again) == 21 and again["device"].iloc[-1] == "new"


text = st.text(st.sampled_from(list('ab ,"\n\r\té€') + ["x"]), max_size=6)
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(floats, st.integers(-2**40, 2**40), text, st.booleans(),
                          st.sampled_from(["a", "b,c", 'q"', ""]),
                          st.one_of(st.none(), text)), min_size=1, max_size=12))
def test_csv_text_is_what_pandas_writes(records):
    df = pd.DataFrame(records, columns=["f", "i", "s", "b", "c", "m"])
    df["c"] = df["c"].astype("category")
    df["s"] = df["s"].astype(object)  # plain Python text
    df["m"] = df["m"].astype("str")  # pandas' text type, with missing values
    assert df.dtypes["f"] == "float64" and df.dtypes["i"] == "int64"
    for frame in (df, df[["s"]], df[["m"]], df.rename(columns={"f": "a,b"})):
        assert csv_text(frame) == frame.to_csv(index=False, float_format=FLOAT_FORMAT,
                                               lineterminator="\n")


def test_csv_text_keeps_minus_zero_apart_and_leaves_other_columns_to_pandas():
    df = pd.DataFrame({"x": [0.0, -0.0, np.nan], "o": [1, "a", None]})
    assert csv_text(df[["x"]]) == 'x\n0\n-0\n""\n'  # a lone empty field is quoted
    assert csv_text(df) == df.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
