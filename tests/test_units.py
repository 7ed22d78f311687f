import pytest

from simdl import units
from simdl.errors import UnitError


@pytest.mark.parametrize("text, kind, expected", [
    ("300Mbps", "bandwidth", 300e6 / 8),
    ("1.5GB/s", "bandwidth", 1.5e9),
    ("54 Mbps", "bandwidth", 54e6 / 8),
    ("5ms", "time", 0.005),
    ("2us", "time", 2e-6),
    ("4GiB", "size", 4 * 2**30),
    ("512MB", "size", 512e6),
    ("2TFLOPS", "compute", 2e12),
    ("26TOPS", "compute", 26e12),
    ("5W", "power", 5.0),
    ("300mW", "power", 0.3),
    ("15Wh", "energy", 15 * 3600.0),
    ("1e3J", "energy", 1000.0),
    (0.25, "time", 0.25),
    ("7", "size", 7.0),
])
def test_good_strings_become_si_numbers(text, kind, expected):
    assert units.parse(text, kind) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("text, kind", [
    ("300Mbs", "bandwidth"), ("fast", "time"), ("5 parsecs", "time"),
    ("4GB", "bandwidth"), ("", "size"), ("5WW", "power"), (True, "size"),
])
def test_bad_strings_are_quoted_with_the_accepted_forms(text, kind):
    with pytest.raises(UnitError) as err:
        units.parse(text, kind)
    msg = str(err.value)
    assert repr(text) in msg
    assert "for example" in msg
    assert "\n" not in msg


def test_error_names_the_field_when_given():
    with pytest.raises(UnitError, match=r"^network\.bandwidth: '3 Mbit' is not valid; write a bandwidth .*Mbps"):
        units.parse("3 Mbit", "bandwidth", where="network.bandwidth")


def test_human_strings_round_trip_the_magnitude():
    assert units.human(37.5e6, "bandwidth") == "37.5 MB/s"
    assert units.human(0.005, "time") == "5 ms"
