"""Roll-out steps within a process type's deployment minimum and maximum (Convox's semantics, percent of the
count): at least the minimum serves and at most the maximum runs at every moment of a roll-out."""

from __future__ import annotations

import pytest

from shared.provider.local.rolling import Step, bounds, next_step


def steps(count: int, minimum: int, maximum: int, old: int | None = None) -> list[Step]:
    """The whole roll-out of ``old`` serving processes (the count by default) to ``count`` new ones, each
    step checked against the bounds as it happens."""
    limits = bounds(count, minimum, maximum)
    new, old = 0, count if old is None else old
    taken = []
    while (step := next_step(count, minimum, maximum, new, old)).start:
        taken.append(step)
        old -= step.stop
        assert new + old >= min(limits.serving, count), f"{new + old} serve after {step}"
        if limits.running > limits.serving:  # else no room: one beyond the maximum (below, tested apart)
            assert new + old + step.start <= limits.running, f"{new + old + step.start} run in {step}"
        new += step.start
        assert len(taken) <= count
    assert new == count
    return taken


def test_by_default_the_whole_count_starts_at_once_and_nothing_old_stops_first() -> None:
    assert steps(4, 50, 200) == [Step(stop=0, start=4)]
    assert steps(1, 50, 200) == [Step(stop=0, start=1)]
    assert bounds(4, 50, 200).serving == 2 and bounds(4, 50, 200).running == 8


def test_a_maximum_of_100_replaces_the_count_in_batches_that_keep_the_minimum_serving() -> None:
    assert steps(4, 50, 100) == [Step(stop=2, start=2), Step(stop=2, start=2)]
    assert steps(3, 50, 100) == [Step(stop=1, start=1), Step(stop=1, start=1), Step(stop=1, start=1)]
    assert steps(4, 75, 100) == [Step(stop=1, start=1)] * 4


def test_a_maximum_between_counts_surges_what_it_allows() -> None:
    assert steps(3, 50, 150) == [Step(stop=1, start=2), Step(stop=1, start=1)]
    assert steps(4, 100, 150) == [Step(stop=0, start=2), Step(stop=2, start=2)]


def test_a_singleton_stops_its_old_process_before_the_new_one_starts() -> None:
    assert steps(1, 0, 100) == [Step(stop=1, start=1)]


def test_minimum_and_maximum_of_100_go_one_beyond_the_maximum_rather_than_below_the_minimum() -> None:
    assert steps(2, 100, 100) == [Step(stop=0, start=1), Step(stop=1, start=1)]
    assert steps(1, 50, 100) == [Step(stop=0, start=1)]  # ceil(0.5) = 1 serves, floor(1) = 1 runs: no room


def test_old_processes_that_do_not_serve_stop_first_and_a_scale_down_keeps_the_minimum() -> None:
    assert next_step(2, 50, 100, new=0, old_serving=1, old_other=1) == Step(stop=1, start=1)
    assert steps(2, 50, 100, old=4) == [Step(stop=3, start=1), Step(stop=1, start=1)]
    assert next_step(3, 50, 100, new=3, old_serving=3) == Step(stop=0, start=0)  # the old ones left stop after


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
@pytest.mark.parametrize(("minimum", "maximum"), [(0, 100), (50, 100), (50, 150), (50, 200), (100, 200), (25, 125)])
def test_every_roll_out_ends_within_its_bounds(count: int, minimum: int, maximum: int) -> None:
    steps(count, minimum, maximum)
