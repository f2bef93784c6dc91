"""The default sampler learns from each candidate's longest rung (nas_kd.search.sampler)."""

from __future__ import annotations

import optuna
import pytest

from nas_kd.search.rungs import RungResult
from nas_kd.search.sampler import RungAwareTPESampler, make_sampler, rung_scores


def test_a_candidate_is_scored_at_its_longest_rung_less_that_rungs_median_gain():
    results = [RungResult(0, 0, 0.80, 1), RungResult(0, 1, 0.86, 1),  # gain 0.06
               RungResult(1, 0, 0.70, 2), RungResult(1, 1, 0.84, 2),  # gain 0.14: a slow starter
               RungResult(2, 0, 0.82, 3), RungResult(2, 1, 0.84, 3),  # gain 0.02
               RungResult(3, 0, 0.75, 4),  # never promoted
               RungResult(4, 1, 0.9, 5)]  # no rung 0 (cannot be put on its scale)
    scores = rung_scores(results)
    assert set(scores) == {0, 1, 2, 3}
    assert scores[0] == pytest.approx(0.86 - 0.06)
    assert scores[1] == pytest.approx(0.84 - 0.06)  # up from 0.70: it gained more than is usual
    assert scores[2] == pytest.approx(0.84 - 0.06)  # down from 0.82
    assert scores[3] == pytest.approx(0.75)


def test_with_one_promotion_its_score_is_its_own_rung_zero():
    assert rung_scores([RungResult(0, 0, 0.8, 1), RungResult(0, 2, 0.9, 1)]) == {0: pytest.approx(0.8)}


def _study_where_a_leads_at_rung_zero(sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for i in range(24):
        x = "a" if i % 2 else "b"
        study.add_trial(optuna.trial.create_trial(
            params={"x": x, "y": float(i % 5)}, values=[0.9 if x == "a" else 0.5, 1.0],
            distributions={"x": optuna.distributions.CategoricalDistribution(["a", "b"]),
                           "y": optuna.distributions.FloatDistribution(0, 4)}))
    return study


def _share_of_b(study: optuna.Study) -> float:
    picks = []
    for _ in range(30):
        trial = study.ask({"x": optuna.distributions.CategoricalDistribution(["a", "b"]),
                           "y": optuna.distributions.FloatDistribution(0, 4)})
        picks.append(trial.params["x"])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return picks.count("b") / len(picks)


def test_the_model_follows_the_rescored_values_not_the_told_ones():
    # the rungs say b is the better design although a led at rung 0: the sampler must follow them
    flipped = {i: (0.4 if i % 2 else 0.95) for i in range(24)}
    rung_aware = _study_where_a_leads_at_rung_zero(RungAwareTPESampler(lambda: flipped, seed=0, multivariate=True,
                                                                       group=True, n_startup_trials=10))
    plain = _study_where_a_leads_at_rung_zero(make_sampler("tpe", 0))
    assert _share_of_b(rung_aware) > 0.7
    assert _share_of_b(plain) < 0.3
    # the study itself keeps what was measured
    assert {t.values[0] for t in rung_aware.trials if t.values} == {0.9, 0.5}


def test_only_tpe_rungs_is_rung_aware_and_only_when_given_scores():
    assert type(make_sampler("tpe", 0, lambda: {})) is optuna.samplers.TPESampler
    assert isinstance(make_sampler("tpe-rungs", 0, lambda: {}), RungAwareTPESampler)
    assert type(make_sampler("tpe-rungs", 0)) is optuna.samplers.TPESampler  # one rung: nothing to rescore
    assert isinstance(make_sampler("random", 0, lambda: {}), optuna.samplers.RandomSampler)


def _draw(study: optuna.Study, space, shape=(1, 28, 28)) -> tuple[int, str]:
    trial = study.ask()
    return trial.number, repr(space.sample(trial, shape, 10))


def test_random_gives_trial_n_the_same_candidate_whichever_worker_asks():
    from nas_kd.search.space import load_space

    space = load_space("default")
    alone = optuna.create_study(sampler=make_sampler("random", 7))
    one_worker = dict(_draw(alone, space) for _ in range(6))
    storage = optuna.storages.InMemoryStorage()
    a = optuna.create_study(storage=storage, study_name="s", sampler=make_sampler("random", 7))
    # the second worker gets its own offset, as the search loop gives each worker and resumed run
    b = optuna.load_study(storage=storage, study_name="s", sampler=make_sampler("random", 7, offset=1003))
    # two workers asking in an uneven order, as asynchronous workers do
    two_workers = dict(_draw(w, space) for w in (a, b, b, a, b, a))
    assert two_workers == one_worker
    assert len(set(one_worker.values())) == 6  # each number its own candidate, not one repeated
    other_seed = optuna.create_study(sampler=make_sampler("random", 8))
    assert dict(_draw(other_seed, space) for _ in range(6)) != one_worker


def test_flop_bands_halve_from_the_budget_down_to_the_cheapest_member():
    from nas_kd.search.sampler import flop_bands

    assert flop_bands(168_328, 5_000_000) == [(0.0, 312_500.0), (312_500.0, 625_000.0), (625_000.0, 1_250_000.0),
                                              (1_250_000.0, 2_500_000.0), (2_500_000.0, 5_000_000.0)]
    assert flop_bands(4_000_000, 5_000_000) == [(0.0, 5_000_000.0)]  # no room for a second band


def test_each_band_gets_a_turn_cheapest_first_and_the_top_band_two():
    from nas_kd.search.sampler import band_of

    assert [band_of(n, 5) for n in range(13)] == [0, 1, 2, 3, 4, 4, 0, 1, 2, 3, 4, 4, 0]
    assert [band_of(n, 1) for n in range(3)] == [0, 0, 0]
    assert [sum(band_of(n, 5) == b for n in range(40)) for b in range(5)] == [7, 7, 7, 7, 12]


def test_a_draw_in_a_flop_range_is_a_member_of_that_range_and_rebuilds_as_one():
    import numpy as np

    from nas_kd.model.cost import analytic_flops
    from nas_kd.search.space import load_space

    space, shape = load_space("default"), (1, 28, 28)
    rng = np.random.default_rng(0)
    for band in [(0.0, 312_500.0), (2_500_000.0, 5_000_000.0)]:
        draws = [space.draw(rng, shape, 10, band) for _ in range(5)]
        specs = [space.sample(optuna.trial.FixedTrial(p), shape, 10) for p in draws]
        assert all(band[0] < analytic_flops(s, shape) <= band[1] for s in specs)
        assert len({repr(s) for s in specs}) == 5
    assert space.draw(rng, shape, 10, (0.0, 1000.0), tries=200) is None  # nothing that cheap


def test_stratified_gives_trial_n_a_member_of_its_band_whichever_worker_asks():
    from nas_kd.model.cost import analytic_flops
    from nas_kd.search.sampler import band_of, band_proposals, flop_bands
    from nas_kd.search.space import load_space

    space, shape = load_space("default"), (1, 28, 28)
    bands = flop_bands(space.cheapest(shape, 10)[1], 5_000_000)

    def sampler(offset=0):
        propose = band_proposals(lambda rng, band: space.draw(rng, shape, 10, band), bands, seed=3)
        return make_sampler("stratified", 3, offset=offset, propose=propose)

    alone = optuna.create_study(sampler=sampler())
    one_worker = dict(_draw(alone, space) for _ in range(10))
    storage = optuna.storages.InMemoryStorage()
    a = optuna.create_study(storage=storage, study_name="s", sampler=sampler())
    b = optuna.load_study(storage=storage, study_name="s", sampler=sampler(offset=1003))
    assert dict(_draw(w, space) for w in (a, b, b, a, b, a, a, b, a, b)) == one_worker
    for trial in alone.trials:
        flops = analytic_flops(space.sample(optuna.trial.FixedTrial(trial.params), shape, 10), shape)
        low, high = bands[band_of(trial.number, len(bands))]
        assert low < flops <= high
    assert type(make_sampler("stratified", 3)) is type(make_sampler("random", 3))  # no proposals: random


def test_a_change_is_one_used_knob_away_inside_the_band_and_never_a_tried_architecture():
    import numpy as np

    from nas_kd.model.cost import analytic_flops
    from nas_kd.search.space import load_space

    space, shape, band = load_space("default"), (1, 28, 28), (2_500_000.0, 5_000_000.0)
    rng = np.random.default_rng(0)
    parent = space.draw(rng, shape, 10, band)
    parent_spec = space.sample(optuna.trial.FixedTrial(parent), shape, 10)
    children = [space.mutate(rng, parent, shape, 10, band) for _ in range(20)]
    for child in children:
        spec = space.sample(optuna.trial.FixedTrial(child), shape, 10)
        assert spec != parent_spec and band[0] < analytic_flops(spec, shape) <= band[1]
        assert sum(child[k] != v for k, v in parent.items()) == 1  # one knob of those the parent uses
    assert len({repr(c) for c in children}) > 5  # which knob, and to what, is drawn
    # every neighbour but one already tried: the change finds the one left
    neighbours = {space.sample(optuna.trial.FixedTrial(c), shape, 10).to_json() for c in children}
    keep = next(iter(neighbours))
    again = [space.mutate(rng, parent, shape, 10, band, avoid=frozenset(neighbours - {keep}), tries=5000)
             for _ in range(3)]
    assert all(space.sample(optuna.trial.FixedTrial(c), shape, 10).to_json() not in neighbours - {keep}
               for c in again if c is not None)
    assert space.mutate(rng, parent, shape, 10, (0.0, 1000.0), tries=50) is None  # nothing that cheap nearby


def test_local_changes_the_top_bands_best_on_its_extra_turns_once_enough_are_scored():
    from nas_kd.search.sampler import LOCAL_AFTER, LOCAL_PARENTS, band_of, local_proposals

    ranked: list[dict] = []
    local = local_proposals(lambda n: {"drawn": n}, lambda rng, parent: {"changed": parent["drawn"]},
                            lambda: ranked, count=3, seed=0)
    extra = [n for n in range(40) if n % 4 == 3]  # the top band's second turn in each cycle of 3 bands
    assert all(band_of(n, 3) == 2 for n in extra)
    assert [local(n) for n in range(8)] == [{"drawn": n} for n in range(8)]  # none scored yet: stratified's
    ranked[:] = [{"drawn": n} for n in (6, 2, 7, 3)][:LOCAL_AFTER]
    assert local(7) == {"drawn": 7}  # a proposal once made stays (every parameter of a trial asks again)
    assert local(10) == {"drawn": 10} and local(9) == {"drawn": 9}  # not an extra turn
    parents = {local(n)["changed"] for n in extra[2:]}
    assert parents <= {p["drawn"] for p in ranked[:LOCAL_PARENTS]} and len(parents) > 1  # one of the best few
    nothing = local_proposals(lambda n: {"drawn": n}, lambda rng, parent: None, lambda: ranked, count=3, seed=0)
    assert nothing(11) == {"drawn": 11}  # no change found: stratified's member
