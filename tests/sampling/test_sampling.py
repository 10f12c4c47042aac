"""Teacher samplers: empirical frequencies, determinism, validation and the learned update."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from skdcache.sampling.base import Sampler
from skdcache.sampling.categorical import describe, from_metrics, from_weights, uniform
from skdcache.sampling.factory import build_sampler
from skdcache.sampling.learned import LearnedSampler
from skdcache.sampling.student_aware import FitSampler, ScheduleSampler

N_DRAWS = 20_000
N_SE = 4.0  # allowed deviation in standard errors sqrt(p (1 - p) / n); a false failure has odds ~1e-4


def _assert_frequencies_match(sampler: Sampler) -> None:
    draws = np.array([sampler.sample(step) for step in range(N_DRAWS)])
    probs = sampler.probs()
    freqs = np.bincount(draws, minlength=probs.size) / N_DRAWS
    bound = N_SE * np.sqrt(probs * (1 - probs) / N_DRAWS)
    assert freqs.size == probs.size
    assert np.all(np.abs(freqs - probs) <= bound), (freqs, probs, bound)


def test_uniform_probs_and_frequencies() -> None:
    sampler = uniform(4, seed=0)
    assert np.allclose(sampler.probs(), 0.25)
    _assert_frequencies_match(sampler)


def test_weights_normalised_and_frequencies() -> None:
    sampler = from_weights([2.0, 3.0, 5.0], n_teachers=3, seed=1)
    assert np.allclose(sampler.probs(), [0.2, 0.3, 0.5])
    _assert_frequencies_match(sampler)


def test_zero_weight_teacher_never_drawn() -> None:
    sampler = from_weights([0.0, 1.0, 0.0], n_teachers=3, seed=5)
    assert {sampler.sample(step) for step in range(500)} == {1}


def test_metrics_softmax_and_frequencies() -> None:
    metrics = [0.80, 0.85, 0.90]
    sampler = from_metrics(metrics, seed=2)
    probs = sampler.probs()
    exps = [math.exp(m / 0.05) for m in metrics]
    assert np.allclose(probs, [e / sum(exps) for e in exps])
    assert probs[2] / probs[1] == pytest.approx(math.e)  # a 5-point gap at T = 0.05 is a factor e
    _assert_frequencies_match(sampler)


def test_metrics_lower_is_better_reverses_order() -> None:
    probs = from_metrics([0.1, 0.3], seed=0, temperature=0.1, higher_is_better=False).probs()
    assert probs[0] > probs[1]
    assert probs[0] / probs[1] == pytest.approx(math.exp(2.0))


def test_metrics_nan_rejected() -> None:
    with pytest.raises(ValueError, match=r"teachers \[1\]"):
        from_metrics([0.8, float("nan")], seed=0)
    with pytest.raises(ValueError):
        from_metrics([0.8, 0.9], seed=0, temperature=0.0)


def test_sample_deterministic_across_instances_and_seeds() -> None:
    a = from_weights([1, 1, 1, 1, 1], n_teachers=5, seed=42)
    b = from_weights([1, 1, 1, 1, 1], n_teachers=5, seed=42)
    c = from_weights([1, 1, 1, 1, 1], n_teachers=5, seed=43)
    steps = [1000, 3, 77, 0, 512] + list(range(200))  # order of calls must not matter
    draws_a = [a.sample(s) for s in steps]
    assert draws_a == [b.sample(s) for s in reversed(steps)][::-1]
    assert draws_a != [c.sample(s) for s in steps]
    assert len(set(draws_a)) == 5


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([0.5, 0.5], "one weight per teacher"),
        ([0.5, -0.1, 0.6], ">= 0"),
        ([0.5, float("nan"), 0.5], "finite"),
        ([0.5, float("inf"), 0.5], "finite"),
        ([0.0, 0.0, 0.0], "positive weight"),
        ("0.2,0.3,0.5", "split"),
    ],
)
def test_bad_weights_raise(weights, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        from_weights(weights, n_teachers=3, seed=0)


def test_learned_starts_uniform_and_only_sampled_logit_moves() -> None:
    sampler = LearnedSampler(4, seed=0, lr=0.5)
    assert np.allclose(sampler.probs(), 0.25)
    sampler.update(2, reward=1.0)  # first reward initialises the baseline: zero advantage
    assert sampler.state_dict()["theta"] == [0.0, 0.0, 0.0, 0.0]
    sampler.update(1, reward=3.0)  # first advantage 2.0 sets the scale: a normalised step of exactly lr
    theta = sampler.state_dict()["theta"]
    assert theta[1] == pytest.approx(0.5)
    assert theta[0] == theta[2] == theta[3] == 0.0
    baseline = 0.9 * 1.0 + 0.1 * 3.0
    assert sampler.state_dict()["baseline"] == pytest.approx(baseline)
    sampler.update(3, reward=0.0)
    scale = np.sqrt(0.9 * 2.0**2 + 0.1 * baseline**2)
    theta = sampler.state_dict()["theta"]
    assert theta[3] == pytest.approx(0.5 * (0.0 - baseline) / scale)
    assert theta[:3] == pytest.approx([0.0, 0.5, 0.0])
    assert len(sampler.history()) == 3
    assert sampler.history()[-1] == pytest.approx(sampler.probs().tolist())


@pytest.mark.parametrize("reward_scale", [1e-4, 1.0, 1e3])
def test_learned_update_is_scale_free(reward_scale: float) -> None:
    """Held-out loss drops are ~1e-4: the same lr must move the distribution as far as for unit rewards."""
    rewards = np.random.default_rng(3).normal([0.0, 1.0, 0.2], 0.5, size=(200, 3))
    reference, scaled = LearnedSampler(3, seed=1, lr=0.1), LearnedSampler(3, seed=1, lr=0.1)
    for step in range(200):
        t = reference.sample(step)
        assert scaled.sample(step) == t
        reference.update(t, float(rewards[step, t]))
        scaled.update(t, float(rewards[step, t]) * reward_scale)
    assert scaled.probs() == pytest.approx(reference.probs(), rel=1e-6)
    assert int(np.argmax(scaled.probs())) == 1 and scaled.probs()[1] > 0.5


def test_learned_best_teacher_wins_and_min_prob_holds() -> None:
    sampler = LearnedSampler(3, seed=7, lr=0.2, min_prob=0.05)
    mean_reward = [0.0, 1.0, 0.3]
    noise = np.random.default_rng(0)
    for step in range(600):
        teacher = sampler.sample(step)
        sampler.update(teacher, mean_reward[teacher] + 0.1 * noise.standard_normal())
    probs = sampler.probs()
    assert int(np.argmax(probs)) == 1
    assert probs[1] > 0.8
    assert probs.min() >= 0.05 - 1e-12
    assert probs.sum() == pytest.approx(1.0)
    assert all(min(p) >= 0.05 - 1e-12 for p in sampler.history())


def test_learned_min_prob_floor_under_huge_logits() -> None:
    sampler = LearnedSampler(4, seed=0, lr=1.0, min_prob=0.02)
    state = sampler.state_dict()
    sampler.load_state_dict({**state, "theta": [1e6, 0.0, 0.0, 0.0]})
    probs = sampler.probs()
    assert np.all(np.isfinite(probs))
    assert probs[1:] == pytest.approx([0.02, 0.02, 0.02])
    assert probs[0] == pytest.approx(1 - 3 * 0.02)


def test_learned_rejects_bad_args() -> None:
    with pytest.raises(ValueError):
        LearnedSampler(10, seed=0, min_prob=0.2)
    sampler = LearnedSampler(3, seed=0)
    with pytest.raises(ValueError):
        sampler.update(3, 1.0)
    with pytest.raises(ValueError):
        sampler.update(0, float("nan"))


def test_learned_state_dict_round_trip_through_json() -> None:
    sampler = LearnedSampler(3, seed=11, lr=0.3, min_prob=0.01)
    for step, reward in enumerate([0.1, 0.5, -0.2, 0.9, 0.4]):
        sampler.update(sampler.sample(step), reward)
    state = json.loads(json.dumps(sampler.state_dict()))
    assert state["steps"] == 5

    restored = LearnedSampler(3, seed=0)  # different seed / hyper-parameters are overwritten by the state
    assert not np.allclose(restored.probs(), sampler.probs())
    restored.load_state_dict(state)
    assert np.allclose(restored.probs(), sampler.probs())
    assert [restored.sample(s) for s in range(50)] == [sampler.sample(s) for s in range(50)]
    restored.update(0, 1.0)
    sampler.update(0, 1.0)
    assert np.allclose(restored.probs(), sampler.probs())

    with pytest.raises(ValueError):
        LearnedSampler(4, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="kind"):
        uniform(3, seed=0).load_state_dict(state)


def test_fixed_state_dict_round_trip() -> None:
    sampler = from_metrics([0.7, 0.9, 0.8], seed=3, kind="teacher-rank")
    state = json.loads(json.dumps(sampler.state_dict()))
    other = from_metrics([0.5, 0.5, 0.5], seed=9, kind="teacher-rank")
    other.load_state_dict(state)
    assert np.allclose(other.probs(), sampler.probs())
    assert [other.sample(s) for s in range(30)] == [sampler.sample(s) for s in range(30)]


def test_build_sampler_kinds() -> None:
    assert build_sampler("uniform", 3, seed=0).probs() == pytest.approx([1 / 3] * 3)
    assert build_sampler("weights", 2, seed=0, weights=[1, 3]).probs() == pytest.approx([0.25, 0.75])
    rank = build_sampler("student-rank", 2, seed=0, metrics=[0.9, 0.8], temperature=0.1)
    assert rank.kind == "student-rank"
    assert rank.probs()[0] / rank.probs()[1] == pytest.approx(math.e)
    learned = build_sampler("learned", 4, seed=0)
    assert isinstance(learned, LearnedSampler) and isinstance(learned, Sampler)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "teacher-rank"}, "needs one metric per teacher"),
        ({"kind": "student-rank", "metrics": [0.9]}, "one metric per teacher"),
        ({"kind": "weights"}, "needs weights"),
        ({"kind": "best"}, "unknown sampler kind"),
    ],
)
def test_build_sampler_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_sampler(n_teachers=3, seed=0, **kwargs)


def test_describe_is_json_ready() -> None:
    record = describe(from_metrics([0.8, 0.9], seed=1, kind="teacher-rank"))
    assert record["kind"] == "teacher-rank"
    assert record["probs"] == pytest.approx(from_metrics([0.8, 0.9], seed=1).probs().tolist())
    assert record["meta"]["temperature"] == 0.05
    learned = LearnedSampler(2, seed=0)
    learned.update(0, 1.0)
    learned_record = json.loads(json.dumps(describe(learned)))
    assert learned_record["kind"] == "learned" and learned_record["steps"] == 1
    assert sum(learned_record["probs"]) == pytest.approx(1.0)


def test_learned_refuses_a_checkpoint_of_the_unscaled_sampler() -> None:
    """Its lr meant raw reward units; resuming it as advantage-RMS units would silently change the run."""
    state = LearnedSampler(3, seed=0).state_dict()
    del state["scale_sq"]
    with pytest.raises(ValueError, match="without --resume"):
        LearnedSampler(3, seed=0).load_state_dict(state)


# ---- samplers that look at the student or at the step ---------------------------------------------------------
def test_small_to_large_moves_from_the_smallest_to_the_largest_teacher() -> None:
    sizes, total = [30, 10, 20], 101  # team order is not size order
    s = ScheduleSampler(sizes, total, seed=3)
    np.testing.assert_allclose(s.probs_at(0), [0, 1, 0])
    np.testing.assert_allclose(s.probs_at(50), [0, 0, 1])  # the middle of the run: the middle-sized teacher
    np.testing.assert_allclose(s.probs_at(25), [0, 0.5, 0.5])
    np.testing.assert_allclose(s.probs_at(100), [1, 0, 0])
    draws = [s.sample(i) for i in range(total)]
    assert set(draws[:10]) <= {1, 2} and set(draws[-10:]) <= {0, 2}
    early = np.mean([d == 1 for d in draws[:25]])
    assert early > 0.5  # mostly the smallest teacher in the first quarter
    assert s.probs().sum() == pytest.approx(1.0)


def test_student_fit_prefers_the_teacher_the_student_follows() -> None:
    s = FitSampler(3, seed=0, temperature=0.25, min_prob=0.05)
    np.testing.assert_allclose(s.probs(), [1 / 3] * 3)  # uniform before the first refresh
    s.refresh([0.2, 0.4, 0.3])
    p = s.probs()
    assert p.sum() == pytest.approx(1.0) and p[0] > p[2] > p[1] and p.min() >= 0.05
    # independent reference: softmax(-(kd - min) / (0.25 * mean)) mixed with the floor
    kd = np.array([0.2, 0.4, 0.3])
    ref = np.exp(-(kd - kd.min()) / (0.25 * kd.mean()))
    np.testing.assert_allclose(p, 0.85 * ref / ref.sum() + 0.05)
    s.refresh([1.0, 1.0, 1.0])
    np.testing.assert_allclose(s.probs(), [1 / 3] * 3)
    with pytest.raises(ValueError, match="one finite KD loss per teacher"):
        s.refresh([0.1, float("nan"), 0.2])


def test_student_aware_state_round_trip_through_json() -> None:
    a = FitSampler(2, seed=4)
    a.refresh([0.1, 0.5])
    b = FitSampler(2, seed=4)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [a.sample(i) for i in range(50)] == [b.sample(i) for i in range(50)]
    c = ScheduleSampler([1, 2], 10, seed=1)
    c.load_state_dict(json.loads(json.dumps(c.state_dict())))
    with pytest.raises(ValueError, match="same teachers and steps"):
        ScheduleSampler([1, 2], 11, seed=1).load_state_dict(c.state_dict())


def test_fixed_sampler_builds_known_distributions_and_refuses_loop_bound_ones() -> None:
    from skdcache.errors import SkdError
    from skdcache.training.plan import fixed_sampler

    team = [object(), object()]  # only their number matters for these kinds
    np.testing.assert_allclose(fixed_sampler("weights=1,3", team, 0, 0.05).probs(), [0.25, 0.75])
    np.testing.assert_allclose(fixed_sampler("student-rank", team, 0, 0.05, [0.5, 0.5]).probs(), [0.5, 0.5])
    for kind in ("learned", "student-fit", "small-to-large", "student-rank"):
        with pytest.raises(SkdError, match="needs the training loop"):
            fixed_sampler(kind, team, 0, 0.05)
    with pytest.raises(SkdError, match="weights=0.2,0.3,0.5"):
        fixed_sampler("weights=a,b", team, 0, 0.05)


def _team(sizes: list[int | None]):
    from types import SimpleNamespace

    caches = [
        SimpleNamespace(name=f"t{i}", manifest=SimpleNamespace(teacher=SimpleNamespace(num_parameters=s)))
        for i, s in enumerate(sizes)
    ]
    return SimpleNamespace(caches=caches, total_steps=10, eval_every=5)


@pytest.mark.parametrize(("kind", "most"), [("student-fit", 20), ("learned", 50)])
def test_too_large_a_team_is_refused_in_one_line_naming_the_limit(kind: str, most: int) -> None:
    from types import SimpleNamespace

    from skdcache import SkdError
    from skdcache.training.plan import sampler_for_run

    cfg = SimpleNamespace(
        mode="skd", sampling=kind, seed=0, learned_lr=0.1, sampling_temperature=0.05, warmup_ratio=0.1
    )
    assert sampler_for_run(cfg, _team([1] * most), None) is not None
    with pytest.raises(SkdError) as err:
        sampler_for_run(cfg, _team([1] * (most + 1)), None)
    text = str(err.value)
    assert "\n" not in text and f"at most {most} teachers" in text and f"not {most + 1}" in text


def test_small_to_large_says_when_team_order_decides(caplog) -> None:
    from types import SimpleNamespace

    from skdcache.training.plan import sampler_for_run

    cfg = SimpleNamespace(
        mode="skd", sampling="small-to-large", seed=0, learned_lr=0.1, sampling_temperature=0.05, warmup_ratio=0.1
    )
    with caplog.at_level("WARNING", logger="skdcache.training.plan"):
        sampler_for_run(cfg, _team([3, 1, 2]), None)
    assert not caplog.records
    with caplog.at_level("WARNING", logger="skdcache.training.plan"):
        sampler_for_run(cfg, _team([5, None, 5, 7]), None)
    text = " | ".join(r.getMessage() for r in caplog.records)
    assert "no recorded size for t1" in text and "t0, t2 have the same size" in text


def test_docs_say_one_teacher_per_optimizer_step():
    """docs/sampling.md once said a teacher is drawn per micro-batch under --grad-accum; it is per step."""
    from pathlib import Path

    from skdcache.sampling.factory import build_sampler
    from skdcache.targets.sources import TeacherDraws

    text = (Path(__file__).parents[2] / "docs" / "sampling.md").read_text()
    assert "every micro-batch when" not in text and "optimizer step" in text
    draws = TeacherDraws("skd", build_sampler("uniform", 4, seed=0), 4, grad_accum=3)
    assert all(len({draws(3 * s + m).single for m in range(3)}) == 1 for s in range(20))
