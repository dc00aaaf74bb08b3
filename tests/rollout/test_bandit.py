"""The bandit policy (pure): P(best) per arm, floored shares and the decision, for two or more arms."""

from __future__ import annotations

import pytest

from deployments.rollout.bandit import ArmRewards, decide, floor_shares, moved, prob_best, seed_for


def arm(successes: int, n: int) -> ArmRewards:
    return ArmRewards().add([1.0] * successes + [0.0] * (n - successes))


def test_with_clear_data_the_better_arm_wins_and_gets_most_traffic_but_the_other_keeps_its_floor():
    arms = {"baseline": arm(100, 1000), "candidate": arm(160, 1000)}
    d = decide(arms, min_share=0.05, threshold=0.95, min_samples=100)
    assert d.winner == "candidate" and d.prob_best["candidate"] > 0.99
    assert d.shares["baseline"] == pytest.approx(0.05) and d.shares["candidate"] == pytest.approx(0.95)
    assert "candidate is best" in d.reason


def test_no_winner_is_declared_before_every_arm_has_min_samples_rewards_however_clear_it_looks():
    arms = {"baseline": arm(0, 60), "candidate": arm(60, 60)}
    d = decide(arms, min_share=0.05, threshold=0.95, min_samples=100)
    assert d.prob_best["candidate"] > 0.99 and d.winner is None
    assert "below 100 rewards" in d.reason


def test_equal_arms_share_traffic_evenly_and_no_winner_is_declared():
    arms = {"baseline": arm(100, 1000), "candidate": arm(100, 1000)}
    d = decide(arms, min_share=0.05, threshold=0.95, min_samples=100)
    assert d.winner is None
    assert d.shares["candidate"] == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_the_same_rewards_and_seed_give_the_same_shares_and_another_seed_may_differ(likelihood):
    arms = {"baseline": arm(10, 100), "candidate": arm(13, 100)}
    one = prob_best(arms, likelihood, seed=seed_for("r-1", 3))
    assert one == prob_best(arms, likelihood, seed=seed_for("r-1", 3))
    assert sum(one.values()) == pytest.approx(1.0)
    assert one != prob_best(arms, likelihood, seed=seed_for("r-1", 4))


def test_n_arms_shares_sum_to_one_and_every_arm_gets_at_least_the_floor():
    arms = {"a": arm(50, 1000), "b": arm(80, 1000), "c": arm(120, 1000), "d": arm(121, 1000)}
    d = decide(arms, min_share=0.1, threshold=0.95, min_samples=10)
    assert sum(d.shares.values()) == pytest.approx(1.0)
    assert min(d.shares.values()) >= 0.1 - 1e-12
    assert d.shares["a"] == pytest.approx(0.1) and d.shares["b"] == pytest.approx(0.1)
    assert d.shares["c"] > 0.1 and d.shares["d"] > 0.1 and d.winner is None   # c and d are too close to call


def test_floor_raises_small_shares_and_renormalises_the_rest_in_proportion():
    shares = floor_shares({"a": 0.0, "b": 0.02, "c": 0.28, "d": 0.7}, 0.05)
    assert shares["a"] == shares["b"] == pytest.approx(0.05)
    assert shares["c"] / shares["d"] == pytest.approx(0.28 / 0.7)
    assert sum(shares.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="more than 1/3"):
        floor_shares({"a": 1.0, "b": 0.0, "c": 0.0}, 0.4)


def test_a_continuous_reward_picks_the_arm_with_the_higher_mean():
    base = ArmRewards().add([10.0 + (i % 7) for i in range(400)])
    cand = ArmRewards().add([11.0 + (i % 7) for i in range(400)])
    d = decide({"baseline": base, "candidate": cand}, 0.05, 0.95, 100, likelihood="gaussian")
    assert d.winner == "candidate"
    assert d.prob_best["candidate"] > 0.99


def test_the_baseline_can_win_too():
    d = decide({"baseline": arm(200, 1000), "candidate": arm(100, 1000)}, 0.05, 0.95, 100)
    assert d.winner == "baseline" and d.shares["candidate"] == pytest.approx(0.05)


def test_shares_move_only_past_half_a_percentage_point():
    assert not moved({"baseline": 0.5, "candidate": 0.5}, {"baseline": 0.497, "candidate": 0.503})
    assert moved({"baseline": 0.5, "candidate": 0.5}, {"baseline": 0.49, "candidate": 0.51})
    assert moved({"baseline": 1.0}, {"baseline": 0.5, "candidate": 0.5})
