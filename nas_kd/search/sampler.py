"""The search's samplers, and ``tpe-rungs``: TPE that learns from each candidate's longest rung.

The search's study is told each candidate's rung-0 accuracy (one trial per candidate), so a plain
TPE models rung 0 only. Rung 0 is the weakest judge there is: against export-length training it
ranks the search's best students with Kendall τ −0.07 (rung 2: +0.47, benchmarks/RESULTS.md), and
it underrates the large students that start slowly and gain most from longer training. So
``--sampler tpe-rungs`` sees each candidate at the longest rung it reached, put back on rung 0's scale: that
rung's accuracy minus the median gain over rung 0 of the candidates that reached it. A promoted
candidate that gained more than usual moves up in the model, one that gained less moves down, the
rest keep their rung-0 accuracy. Optuna cannot re-tell a finished trial, so the rescored values
live only in the view the sampler builds its model from; the study keeps what was measured.

Measured, it is not the default: over two cold searches a seed it found students 0.3 points better
near the budget, but a lower hypervolume (0.867/0.871 against 0.879/0.888), 0.6-1.2 points less at
1 MFLOP, and ran 50% longer, as its model chases the slow-training large students
(benchmarks/RESULTS.md, ``sampler_ab.py``).
"""

from __future__ import annotations

import copy
import statistics
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from nas_kd.search.rungs import RungResult

STARTUP_TRIALS = 10  # random candidates before TPE models anything


def make_sampler(name: str, seed: int, scores: Callable[[], dict[int, float]] | None = None,
                 offset: int = 0, propose: Callable[[int], dict[str, Any] | None] | None = None,
                 ) -> optuna.samplers.BaseSampler:
    """The samplers a user can choose; all of them honour trial constraints (FLOPs, params).
    ``scores`` (candidate number -> score on rung 0's scale, see ``rung_scores``) makes TPE learn
    from the longest rungs; the other samplers do not model results that way. ``offset`` (distinct
    per worker and per resumed run) moves a seeded stream so it does not repeat another's draws;
    ``random`` and ``stratified`` need none, as their draws are per trial number. ``propose`` (trial
    number -> its parameters, see ``band_proposals`` and ``local_proposals``) is what ``stratified`` and
    ``local`` draw; without it, they are ``random``."""
    if name in ("stratified", "local") and propose is not None:
        return ProposalSampler(seed, propose)
    if name in ("random", "stratified", "local"):
        return CandidateStreamSampler(seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed + offset, population_size=20)
    options: dict[str, Any] = dict(seed=seed + offset, multivariate=True, group=True, constant_liar=True,
                                   n_startup_trials=STARTUP_TRIALS)
    if name == "tpe" or scores is None:
        return optuna.samplers.TPESampler(**options)
    return RungAwareTPESampler(scores, **options)


class CandidateStreamSampler(optuna.samplers.RandomSampler):
    """Random sampling in which trial N's draws depend only on the seed, N and the parameter.

    Optuna's ``RandomSampler`` draws from one stream per process, so with several workers which
    architecture trial N gets depends on the order in which they ask, and a rerun of the same seed is
    a different search. Here the same seed gives the same candidate under the same number in any
    worker, resumed or not, and two searches of one seed (say, two schedules, or search vs random)
    see the same candidates in the same order: their difference is the schedule's, not the draw's.
    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed)
        self._stream_seed = np.random.SeedSequence().entropy if seed is None else seed

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        stream = np.random.SeedSequence([self._stream_seed, trial.number, zlib.crc32(param_name.encode())])
        self._rng.rng.seed(stream.generate_state(1)[0])
        return super().sample_independent(study, trial, param_name, param_distribution)


BAND_RATIO = 2.0  # each FLOP band of ``stratified`` is up to this many times cheaper than the one above
MAX_BANDS = 8
TOP_BAND_TURNS = 2  # turns of the band under the budget per cycle; every other band gets one


def flop_bands(cheapest: float, budget: float) -> list[tuple[float, float]]:
    """(low, high] FLOP ranges anchored at the budget, each ``BAND_RATIO`` times cheaper than the one
    above, down to the space's cheapest member; cheapest band first (its low is 0)."""
    count = 1
    while count < MAX_BANDS and budget / BAND_RATIO**count > cheapest:
        count += 1
    edges = [budget / BAND_RATIO**k for k in range(count)] + [0.0]
    return [(edges[k + 1], edges[k]) for k in reversed(range(count))]


def band_of(number: int, count: int) -> int:
    """The band (0 = cheapest) of candidate ``number`` among ``count`` bands: one turn each, cheapest
    first, then ``TOP_BAND_TURNS - 1`` more for the band under the budget. The cheap bands decide how far
    down the front reaches after one turn each; ``--pick best`` chooses from the top band. Its second turn
    (12 of 40 candidates rather than 8; plain random draws put about 16) measured level with one on the
    best student under the budget, over 6 seeds (benchmarks/RESULTS.md)."""
    return min(_turn(number, count), count - 1)


def _turn(number: int, count: int) -> int:
    """Candidate ``number``'s place in its cycle of turns: ``count`` and up are the top band's extra ones."""
    return number % (count + TOP_BAND_TURNS - 1)


def band_proposals(draw: Callable[[np.random.Generator, tuple[float, float]], dict[str, Any] | None],
                   bands: Sequence[tuple[float, float]], seed: int) -> Callable[[int], dict[str, Any] | None]:
    """Trial number -> the parameters ``stratified`` gives it: a random member of band ``band_of(number,
    len(bands))`` (cheapest first), drawn by ``draw(rng, band)`` from a stream of the seed and the
    number only, so any worker, resumed or not, proposes the same candidate under the same number."""
    cache: dict[int, dict[str, Any] | None] = {}

    def propose(number: int) -> dict[str, Any] | None:
        if number not in cache:
            cache[number] = draw(np.random.default_rng([seed, number]), bands[band_of(number, len(bands))])
        return cache[number]

    return propose


LOCAL_AFTER = 4  # ``local``: top-band candidates with a score before its extra turns change one
LOCAL_PARENTS = 3  # ``local``: a change's parent is one of the top band's this many best


def local_proposals(propose: Callable[[int], dict[str, Any] | None],
                    mutate: Callable[[np.random.Generator, dict[str, Any]], dict[str, Any] | None],
                    ranked_top: Callable[[], list[dict[str, Any]]], count: int,
                    seed: int) -> Callable[[int], dict[str, Any] | None]:
    """Trial number -> the parameters ``local`` gives it: ``propose``'s (``stratified``'s), except on the
    top band's extra turns (``band_of``), where, once ``ranked_top()`` (the top band's scored candidates'
    parameters, best first) holds ``LOCAL_AFTER``, it is ``mutate`` of one of the ``LOCAL_PARENTS`` best:
    local search around the front's top, where ``--pick best`` chooses (White et al. 2020 found it as
    strong as any NAS method on the NAS benchmarks). Unlike ``stratified``'s, these proposals depend
    on the results so far, so two runs of one seed differ once the first change is made."""
    cache: dict[int, dict[str, Any] | None] = {}

    def local(number: int) -> dict[str, Any] | None:
        if number not in cache:
            changed = None
            if _turn(number, count) >= count:
                parents = ranked_top()
                if len(parents) >= LOCAL_AFTER:
                    rng = np.random.default_rng([seed, number, 1])
                    changed = mutate(rng, parents[int(rng.integers(min(LOCAL_PARENTS, len(parents))))])
            cache[number] = changed if changed is not None else propose(number)
        return cache[number]

    return local


class ProposalSampler(CandidateStreamSampler):
    """``stratified``: random members spread over FLOP bands by construction.

    Plain random draws of the default space put 1.6% of the members under 5M below 0.4 MFLOPs (3% below
    0.5M), so whether a 20-minute search trains any student at the cheap end is a lottery, and the
    hypervolume of accuracy against FLOPs is mostly decided by that strip: one 0.17-MFLOP student at
    85% adds 0.035 to a front that starts at 0.38M, as much as 3 points of accuracy over the whole
    budget would (benchmarks/RESULTS.md). Candidate N is instead a random member of FLOP band
    ``band_of(N, K)``: each band in turn, cheapest first, the top one twice; inside a band, members are
    as likely as under random draws. Parameters a proposal lacks (or a band with no member) fall back
    to per-number random draws."""

    def __init__(self, seed: int, propose: Callable[[int], dict[str, Any] | None]) -> None:
        super().__init__(seed)
        self._propose = propose

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        params = self._propose(trial.number)
        if params is not None and _offers(param_distribution, params.get(param_name)):
            return params[param_name]
        return super().sample_independent(study, trial, param_name, param_distribution)


def _offers(distribution: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` is one the trial's distribution can return (a proposal from the same space is)."""
    try:
        return value is not None and distribution._contains(distribution.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


def rung_scores(results: Iterable[RungResult]) -> dict[int, float]:
    """Each candidate's accuracy at the longest rung it reached, minus that rung's median gain over
    rung 0 (among candidates with both); candidates without a rung-0 result are left out."""
    by_candidate: dict[int, dict[int, float]] = {}
    for r in results:
        by_candidate.setdefault(r.candidate, {})[r.rung] = r.accuracy
    gains: dict[int, list[float]] = {}
    for accs in by_candidate.values():
        for rung, acc in accs.items():
            if rung > 0 and 0 in accs:
                gains.setdefault(rung, []).append(acc - accs[0])
    median_gain = {rung: statistics.median(g) for rung, g in gains.items()}
    scores = {}
    for candidate, accs in by_candidate.items():
        if 0 not in accs:
            continue
        top = max(accs)
        scores[candidate] = accs[top] - median_gain.get(top, 0.0)
    return scores


class RungAwareTPESampler(optuna.samplers.TPESampler):
    """TPE whose model sees ``scores()`` in place of each scored trial's first objective."""

    def __init__(self, scores: Callable[[], dict[int, float]], **options: Any) -> None:
        super().__init__(**options)
        self._scores, self._scored_for, self._cached = scores, None, {}

    def _sample(self, study: optuna.Study, trial: FrozenTrial,
                search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if self._scored_for != trial.number:  # one read of the rungs per candidate, not per parameter group
            self._scored_for, self._cached = trial.number, self._scores()
        return super()._sample(_RescoredStudy(study, self._cached), trial, search_space)


class _RescoredStudy:
    """A read-only view of a study whose finished trials carry rescored first objectives."""

    def __init__(self, study: optuna.Study, scores: dict[int, float]) -> None:
        self._study, self._scores = study, scores

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = False, states: Sequence[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return [_rescored(t, self._scores.get(t.number)) for t in trials]


def _rescored(trial: FrozenTrial, score: float | None) -> FrozenTrial:
    if score is None or trial.state != TrialState.COMPLETE or not trial.values:
        return trial
    view = copy.copy(trial)
    view.values = [score, *trial.values[1:]]
    return view
