"""A serving policy called from code is checked as a scenario's keys are: the field, the
value, what is allowed."""
import pytest

from simdl.errors import PlanError
from simdl.sim.serving import Policy


@pytest.mark.parametrize("kwargs, field", [
    ({"timeout": 0.0}, "workload.timeout"), ({"timeout": -1.0}, "workload.timeout"),
    ({"retries": -1}, "workload.retries"), ({"retries": True}, "workload.retries"),
    ({"retries": 1.5}, "workload.retries"),
])
def test_a_bad_policy_names_its_field(kwargs, field):
    with pytest.raises(PlanError) as err:
        Policy(**kwargs)
    assert err.value.where == field


def test_a_good_policy_keeps_its_values():
    assert (Policy().timeout, Policy().retries) == (None, 2)
    assert (Policy(0.5, 0).timeout, Policy(0.5, 0).retries) == (0.5, 0)
