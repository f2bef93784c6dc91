"""Promotion between rungs on hand-made results: non-dominated first, the front's spread kept."""

from nas_kd.search.rungs import (
    RungResult,
    banded_order,
    cost_bands,
    crowding_distance,
    next_promotion,
    nondominated_fronts,
    promotable,
    promotion_order,
    rung_steps,
)


def _r(candidate: int, accuracy: float, flops: int, rung: int = 0) -> RungResult:
    return RungResult(candidate, rung, accuracy, flops)


# Front: 1 (cheap), 2, 3, 4 (dear). 5 and 6 are dominated (by 2 and by 4); 7 is dominated by 5.
RESULTS = [_r(1, 0.80, 1_000_000), _r(2, 0.85, 2_000_000), _r(3, 0.86, 2_100_000), _r(4, 0.90, 4_000_000),
           _r(5, 0.84, 2_500_000), _r(6, 0.89, 4_500_000), _r(7, 0.83, 3_000_000)]


def test_fronts_are_peeled_in_order():
    fronts = [sorted(RESULTS[i].candidate for i in f) for f in nondominated_fronts(RESULTS)]
    assert fronts == [[1, 2, 3, 4], [5, 6], [7]]


def test_the_fronts_ends_and_sparse_points_go_first_and_dominated_ones_after():
    order = [r.candidate for r in promotion_order(RESULTS)]
    assert set(order[:2]) == {1, 4}  # the ends of the front are infinitely isolated
    assert order[2] == 2 and order[3] == 3  # 3 sits close beside 2 (crowded): 2 before it
    assert order[4:6] in ([5, 6], [6, 5]) and order[6] == 7


def test_crowding_keeps_the_spread_rather_than_the_top():
    # Three near-identical accurate points at the top of the budget and one cheap point: with two
    # places, a pure accuracy order would take two of the clustered ones; crowding takes the ends.
    results = [_r(1, 0.900, 4_000_000), _r(2, 0.899, 3_900_000), _r(3, 0.898, 3_800_000), _r(4, 0.85, 500_000)]
    assert {r.candidate for r in promotion_order(results)[:2]} == {1, 4}
    crowd = crowding_distance(results, [0, 1, 2, 3])
    assert crowd[0] == crowd[3] == float("inf") and max(crowd[1], crowd[2]) < float("inf")


def test_cost_bands_are_anchored_at_the_budget_dearest_first():
    results = [_r(1, 0.8, 200_000), _r(2, 0.8, 300_000), _r(3, 0.8, 1_000_000), _r(4, 0.8, 1_200_000),
               _r(5, 0.8, 4_000_000), _r(6, 0.8, 4_500_000), _r(7, 0.8, 1_700_000)]
    bands = [sorted(results[i].candidate for i in band) for band in cost_bands(results, top=5_000_000)]
    assert bands == [[5, 6, 7], [3, 4], [1, 2]]  # (5M/3, 5M], (5M/9, 5M/3], the rest
    # a new extreme does not move anyone: the bands are the budget's, not the results' range
    more = [*results, _r(8, 0.7, 20_000)]
    assert [sorted(more[i].candidate for i in b) for b in cost_bands(more, top=5_000_000)] == [
        [5, 6, 7], [3, 4], [1, 2, 8]]
    # without a budget the dearest result is the anchor
    assert [sorted(results[i].candidate for i in b) for b in cost_bands(results)] == [[5, 6, 7], [3, 4], [1, 2]]
    assert cost_bands([]) == []


def test_the_top_of_the_budget_gets_its_turn_though_dominated_at_a_short_rung():
    # Small students learn fast: at rung 0 all six dominate the three large ones. Pareto order would
    # promote only small ones; the bands take turns, so the best large one goes up first.
    small = [_r(i, 0.86 - i / 1000, 200_000 + 60_000 * i) for i in range(6)]
    large = [_r(10, 0.82, 3_000_000), _r(11, 0.81, 3_500_000), _r(12, 0.80, 4_000_000)]
    results = small + large
    assert not {r.candidate for r in promotion_order(results)[:3]} & {10, 11, 12}
    order = [r.candidate for r in banded_order(results, top=5_000_000)]
    assert order[0] == 10 and order[1] in (0, 5) and order[2] in (11, 12)  # 10 dominates 11 and 12
    assert sorted(order) == sorted(r.candidate for r in results)  # every result once
    first = next_promotion(results, promoted=set(), top_rung=2, eta=3, top=5_000_000)
    assert first is not None and first.candidate == 10


def test_a_rung_promotes_its_best_third_and_the_highest_rung_comes_first():
    rung0 = [_r(i, 0.80 + i / 100, 1_000_000 * (i + 1)) for i in range(6)]  # all on one front
    first = next_promotion(rung0, promoted=set(), top_rung=2, eta=3)
    assert first is not None and first.rung == 0
    promoted = {(first.candidate, 0)}
    second = next_promotion(rung0, promoted=promoted, top_rung=2, eta=3)
    assert second is not None and second.candidate != first.candidate
    promoted.add((second.candidate, 0))
    assert next_promotion(rung0, promoted=promoted, top_rung=2, eta=3) is None  # 6 // 3 = 2 places only
    rung1 = [_r(first.candidate, 0.9, first.cost, 1), _r(second.candidate, 0.91, second.cost, 1),
             _r(99, 0.92, 9_000_000, 1)]
    up = next_promotion(rung0 + rung1, promoted=promoted | {(99, 0)}, top_rung=2, eta=3)
    assert up is not None and up.rung == 1  # a rung-1 result goes to rung 2 before more rung-0 ones


def test_a_rung_with_fewer_than_eta_results_promotes_nothing_and_the_top_rung_never():
    assert next_promotion([_r(1, 0.9, 1000), _r(2, 0.8, 500)], promoted=set(), top_rung=2, eta=3) is None
    top = [_r(i, 0.9, 1000 + i, 2) for i in range(9)]
    assert next_promotion(top, promoted=set(), top_rung=2, eta=3) is None


def test_past_the_quota_every_result_goes_up_in_the_same_order_highest_rung_first():
    rung0 = [_r(i, 0.80 + i / 100, 1_000_000 * (i + 1)) for i in range(6)]
    best = banded_order(rung0)[:2]  # the rung's quota, already up
    rung1 = [_r(r.candidate, r.accuracy + 0.05, r.cost, 1) for r in best]
    results, promoted = rung0 + rung1, {(r.candidate, 0) for r in best}
    within = promotable(results, promoted=promoted, top_rung=2, eta=3)
    past = promotable(results, promoted=promoted, top_rung=2, eta=3, past_quota=True)
    assert within == []  # 6 // 3 = 2 places at rung 0, both taken; 2 // 3 = 0 at rung 1
    assert [(r.candidate, r.rung) for r in past[:2]] == [(c.candidate, 1) for c in banded_order(rung1)]
    assert past[2:] == [r for r in banded_order(rung0) if (r.candidate, 0) not in promoted]
    top = [_r(i, 0.9, 1000 + i, 2) for i in range(9)]  # the top rung still never goes up
    assert promotable(top, promoted=set(), top_rung=2, eta=3, past_quota=True) == []


def test_rung_steps_grow_by_eta():
    assert [rung_steps(100, 3, k) for k in range(3)] == [100, 300, 900]


def test_past_the_quota_the_top_band_can_go_first_in_the_same_order():
    # --tail rungs (the search's default until 2026-12-07) promotes the small students' rung-1 results to
    # rung 2 before any large student leaves rung 0; top-band takes the top third of the budget first, then the rest.
    small = [_r(i, 0.86 - i / 1000, 200_000 + 60_000 * i) for i in range(6)]
    large = [_r(10, 0.82, 3_000_000), _r(11, 0.81, 3_500_000), _r(12, 0.80, 4_000_000)]
    up = [_r(0, 0.88, small[0].cost, 1), _r(1, 0.879, small[1].cost, 1)]
    results, promoted = small + large + up, {(0, 0), (1, 0)}
    kwargs = {"promoted": promoted, "top_rung": 2, "eta": 3, "top": 5_000_000, "past_quota": True}
    rungs = promotable(results, **kwargs, tail="rungs")
    band = promotable(results, **kwargs, tail="top-band")
    assert [(r.candidate, r.rung) for r in rungs[:2]] == [(0, 1), (1, 1)]
    assert [r.candidate for r in band[:3]] == [r.candidate for r in promotion_order(large)]
    assert band[3:] == [r for r in rungs if r.cost <= 5_000_000 / 3]  # the rest keep their order
    assert sorted(band, key=rungs.index) == rungs  # the same promotions, reordered
    within = promotable(results, promoted=promoted, top_rung=2, eta=3, top=5_000_000, tail="top-band")
    assert within == promotable(results, promoted=promoted, top_rung=2, eta=3, top=5_000_000,
                                tail="rungs")  # the quota unchanged
