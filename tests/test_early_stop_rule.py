"""The early-stopping rule of IMP search rounds (issue 22): the Early-Bird window, the min_fraction floor, what is
refused before training, and the watch's state across a resume. Pure torch on synthetic masks, but for one tiny run."""
import logging
import random

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_bert, toy_evaluator
from nni_bert_tickets import IMPPruner, bert_config_list
from nni_bert_tickets.core.early_stop import EarlyStop, RoundWatch, StopTraining, mask_distance
from nni_bert_tickets.experiments.cli import parse_args
from nni_bert_tickets.experiments.config import ExperimentConfig

N, K = 100, 20  # weights, and how many of them a proposed mask prunes
CURRENT = {"m": {"weight": torch.ones(N)}}


def _shifted(shift: int) -> torch.Tensor:
    """The mask pruning weights shift .. shift + K - 1: one shift further moves it by 2 / (2K) = 0.05."""
    mask = torch.ones(N, dtype=torch.bool)
    mask[shift:shift + K] = False
    return mask


class _Sequence:
    """``propose()`` of a watch driven by hand: the mask at each step is ``mask_at(step)``."""

    def __init__(self, mask_at):
        self.mask_at, self.step = mask_at, 0

    def propose(self):
        return {"m": {"weight": self.mask_at(self.step).float()}}


def _watch(settings: EarlyStop, sequence: _Sequence, **kwargs) -> RoundWatch:
    return RoundWatch(settings, sequence.propose, CURRENT, current_step=lambda: sequence.step, **kwargs)


def _drive(watch: RoundWatch, sequence: _Sequence, steps: range):
    """Steps ``steps`` of a round (stopping where the watch stops it); the step it stopped at, or None."""
    for step in steps:
        sequence.step = step
        try:
            watch()
        except StopTraining:
            return step
    return None


def _drifting(settle_at: int = 20) -> _Sequence:
    return _Sequence(lambda step: _shifted(min(step, settle_at)))


def test_the_window_waits_for_a_slow_drift_that_consecutive_checks_miss():
    """Each step moves the mask by 0.05 (< threshold 0.1) until step 20: the previous-check rule stops at once, on
    a mask 0.85 from the settled one; with a window of 5 the distance to the mask of 5 checks ago (0.25) keeps the
    round going until the drift has stopped."""
    one = _drifting()
    stop_1 = _drive(_watch(EarlyStop(1, 0.1, 2), one), one, range(1, 65))
    sequence = _drifting()
    five = _watch(EarlyStop(1, 0.1, 2, window=5), sequence)
    stop_5 = _drive(five, sequence, range(1, 65))
    assert stop_1 == 3 and stop_5 == 25  # calm from step 24: the masks of steps 19..23 are within one shift
    assert five.checks[0] == (6, pytest.approx(0.25)) and [s for s, _ in five.checks] == list(range(6, 26))
    assert all(d == pytest.approx(0.25) for _, d in five.checks[:14])  # the largest distance, 5 shifts back
    settled, ones = _shifted(20), torch.ones(N, dtype=torch.bool)
    assert mask_distance(_shifted(stop_1), settled, ones) == pytest.approx(0.85)  # 3 of 20 pruned weights shared
    assert mask_distance(_shifted(min(stop_5, 20)), settled, ones) == 0.0
    assert EarlyStop(1, 0.1, 2, window=5).earliest_stop() == 7


def test_a_window_of_one_is_the_previous_check_rule():
    """window 1 records, at every check but the first, the distance to the previous check's mask, and stops after
    `patience` calm ones in a row (today's rule, written out here)."""
    rng = random.Random(0)
    shifts = [rng.choice([0, 0, 1, 2]) for _ in range(80)]  # a random walk of small and large moves
    sequence = _Sequence(lambda step: _shifted(sum(shifts[:step]) % (N - K)))
    settings = EarlyStop(check_every=3, threshold=0.11, patience=4)  # calm runs of 3, 1, 3, 2, then 4
    watch = _watch(settings, sequence)
    stopped = _drive(watch, sequence, range(1, 81))
    expected, calm, previous = [], 0, None
    for step in range(3, 81, 3):
        mask = sequence.mask_at(step)
        if previous is not None:
            expected.append((step, mask_distance(previous, mask, torch.ones(N, dtype=torch.bool))))
            calm = calm + 1 if expected[-1][1] < 0.11 else 0
        previous = mask
        if calm >= 4:
            break
    assert watch.checks == expected and stopped == expected[-1][0] and calm == 4
    assert settings.settings() == {"check_every": 3, "threshold": 0.11, "patience": 4}  # a saved run's settings


def test_min_fraction_holds_the_stop_back_to_the_first_check_after_the_floor():
    sequence = _Sequence(lambda step: _shifted(0))  # settled from the start: calm at every judged check
    assert _drive(_watch(EarlyStop(3, 0.1, 2), sequence), sequence, range(1, 41)) == 9
    settings = EarlyStop(3, 0.1, 2, min_fraction=0.5)
    watch = _watch(settings, sequence, total_steps=40)
    assert _drive(watch, sequence, range(1, 41)) == 21 == settings.earliest_stop(40)  # floor 20, checks every 3
    assert len(watch.checks) == 6 and watch.stopped_at == 21
    # a floor of 0.99 of 10 steps falls on the round's last step: that is no stop (the round trained fully and is
    # evaluated like any other), so the watch lets it end
    last = _watch(EarlyStop(2, 0.1, 1, min_fraction=0.99), sequence, total_steps=10)
    assert _drive(last, sequence, range(1, 11)) is None and last.stopped_at is None
    assert _drive(_watch(EarlyStop(2, 0.1, 1, min_fraction=0.8), sequence, total_steps=12), sequence,
                  range(1, 13)) == 10  # a floor of 9.6 steps of 12: the check at step 10 stops it, two before the end
    assert settings.settings()["min_fraction"] == 0.5 and "window" not in settings.settings()


def test_a_resumed_watch_keeps_its_window_and_stops_where_an_uninterrupted_one_does(tmp_path):
    settings = EarlyStop(2, 0.1, 2, window=4, min_fraction=0.25)
    straight_sequence = _drifting(settle_at=30)
    straight = _watch(settings, straight_sequence, total_steps=64)
    stop = _drive(straight, straight_sequence, range(1, 65))
    assert stop is not None and stop > 30
    for kill_at in (1, 2, 7, 8, 31, 38):  # before any check, at the first, mid-window, drifting, in the calm run
        sequence = _drifting(settle_at=30)
        first = _watch(settings, sequence, total_steps=64)
        assert _drive(first, sequence, range(1, kill_at + 1)) is None
        save_file(first.state_dict(), str(tmp_path / "extra-early_stop.safetensors"))  # as a step checkpoint does
        again = _watch(settings, sequence, total_steps=64)
        again.load_state_dict(load_file(str(tmp_path / "extra-early_stop.safetensors")))
        assert _drive(again, sequence, range(kill_at + 1, 65)) == stop, kill_at
        assert again.checks == straight.checks and again.stopped_at == straight.stopped_at
    sequence = _Sequence(lambda step: _shifted(3))
    legacy = _watch(EarlyStop(1, 0.1, 1), sequence)  # a step checkpoint written before the window existed
    legacy.load_state_dict({"calm": torch.tensor([0]), "checks": torch.zeros(0, 2, dtype=torch.float64),
                            "previous": _shifted(3)})
    assert _drive(legacy, sequence, range(4, 6)) == 4 and legacy.checks == [(4, 0.0)]


def test_bad_rules_are_refused_before_training_with_the_setting_named(caplog):
    for bad in (dict(window=0), dict(window=1.5), dict(window=True), dict(min_fraction=1.0), dict(min_fraction=-0.1),
                dict(min_fraction="0.5")):
        with pytest.raises(ValueError, match=f"EarlyStop.{next(iter(bad))}"):
            EarlyStop(**bad)
    with pytest.raises(ValueError, match="min_fraction .*total_steps"):
        RoundWatch(EarlyStop(min_fraction=0.5), lambda: CURRENT, CURRENT)
    model = tiny_bert()
    pruner = IMPPruner(model, bert_config_list(model, 0.2), toy_evaluator(model, steps=8), step=0.1,
                       early_stop=EarlyStop(2, 0.2, 2, min_fraction=0.5))
    with pytest.raises(ValueError, match="min_fraction .*max_steps"):
        pruner.compress()  # a plain NNI evaluator does not tell the round's length
    assert pruner.trajectory == []  # refused before any training
    with caplog.at_level(logging.WARNING, logger="nni_bert_tickets.core.early_stop"):
        EarlyStop(10, 0.01, 3, window=5).check_round(64)  # earliest stop 80 > 64
        EarlyStop(10, 0.01, 3).check_round(64)
    assert len(caplog.records) == 1 and "cannot stop a round of 64 steps" in caplog.records[0].getMessage()

    for flags, named in ((["--early-stop-window", "0"], "early_stop_window"),
                         (["--early-stop-min-fraction", "1"], "early_stop_min_fraction"),
                         (["--early-stop-min-fraction", "-0.5"], "early_stop_min_fraction")):
        with pytest.raises(ValueError, match=f"{named} is|{named} must"):
            parse_args(["--early-stop-every", "5", *flags])
        with pytest.raises(ValueError, match="early stopping is off"):
            parse_args(flags)


def test_a_pruner_with_a_floor_stops_no_search_round_before_it():
    model = tiny_bert()
    pruner = IMPPruner(model, bert_config_list(model, 0.2), toy_evaluator(model, steps=30, lr=1e-4), step=0.1,
                       early_stop=EarlyStop(check_every=2, threshold=0.2, patience=2, min_fraction=0.5))
    pruner.compress(max_steps=30)
    search, last = pruner.trajectory[:-1], pruner.trajectory[-1]
    for record in search:  # unfloored, these rounds stop before step 15 (test_search_and_tracking)
        assert record["early_stopped"] and record["steps"] >= 16 and record["mask_checks"][0][0] == 4
    assert last["steps"] == 30 and last["metric"] is not None


def test_the_settings_reach_the_config_the_cli_and_the_run_name(tmp_path, capsys):
    base = ExperimentConfig(task="rte", early_stop_every=10)
    assert "early_stop_window" not in base.hashed() and "early_stop_min_fraction" not in base.hashed()
    assert ExperimentConfig(task="rte", early_stop_every=10, early_stop_window=1,
                            early_stop_min_fraction=0).run_name() == base.run_name()  # earlier runs keep their names
    windowed = ExperimentConfig(task="rte", early_stop_every=10, early_stop_window=5, early_stop_min_fraction=0.5)
    assert windowed.early_stop() == EarlyStop(10, 0.01, 3, 5, 0.5)
    names = {windowed.run_name(), base.run_name(),
             ExperimentConfig(task="rte", early_stop_every=10, early_stop_window=5).run_name()}
    assert len(names) == 3  # other rules, other masks
    (tmp_path / "rule.yaml").write_text("early_stop_every: 10\nearly_stop_window: 5\nearly_stop_min_fraction: 0.5\n")
    loaded = parse_args(["--config", str(tmp_path / "rule.yaml")])
    assert loaded.early_stop() == windowed.early_stop() and loaded.run_name() == windowed.run_name()
    assert parse_args(["--early-stop-every", "10", "--early-stop-window", "5", "--early-stop-min-fraction",
                       "0.5"]).run_name() == windowed.run_name()
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "the previous check; Early-Bird: 5) (default: 1)" in shown and "fraction of its steps, in [0, 1) " \
        "(default: 0.0)" in shown
