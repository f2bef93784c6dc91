import pytest

from nas_kd.study.pareto import hypervolume, pareto_front


def test_front_keeps_only_non_dominated_points_cheapest_first():
    points = [(0.80, 1.0), (0.90, 2.0), (0.85, 3.0), (0.95, 5.0), (0.90, 2.0), (0.70, 0.5)]
    assert pareto_front(points) == [5, 0, 1, 3]


def test_hypervolume_by_hand():
    points = [(0.8, 1.0), (0.9, 2.0), (0.85, 3.0), (0.95, 5.0)]
    # strips: [1,2)·0.3 + [2,5)·0.4 + [5,10)·0.45
    assert hypervolume(points, ref_accuracy=0.5, ref_cost=10) == pytest.approx(0.3 + 1.2 + 2.25)


def test_points_outside_the_reference_add_nothing():
    assert hypervolume([(0.4, 1.0), (0.9, 11.0)], ref_accuracy=0.5, ref_cost=10) == 0.0
    assert hypervolume([], ref_accuracy=0.5, ref_cost=10) == 0.0
