from itertools import islice

import numpy as np
import pytest

from proslushka.data import DurationBucketSampler


@pytest.fixture(scope="module")
def durations():
    # a long-tailed spread like read speech: most clips 2-5 s, some up to 20 s
    rng = np.random.default_rng(0)
    return np.clip(rng.lognormal(1.1, 0.5, 1003), 0.5, 20.0).round(3).tolist()


def flat(batches):
    return [i for b in batches for i in b]


SIZES = [{"batch_size": 32}, {"batch_seconds": 60.0}, {"batch_size": 8, "batch_seconds": 60}]


@pytest.mark.parametrize("kwargs", SIZES)
def test_every_clip_once_per_epoch(durations, kwargs):
    sampler = DurationBucketSampler(durations, **kwargs)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(flat(batches)) == list(range(len(durations)))


def test_batches_hold_similar_durations(durations):
    d = np.array(durations)
    bucket = list(DurationBucketSampler(durations, batch_size=32))
    order = np.random.default_rng(1).permutation(len(d))
    random = [order[i : i + 32] for i in range(0, len(d), 32)]

    def spread(batches):  # mean max/min duration within a batch
        return np.mean([d[b].max() / d[b].min() for b in batches])

    assert spread(bucket) < 1.2
    assert spread(random) > 3 * spread(bucket)


def test_order_depends_on_seed_and_epoch_only(durations):
    def epoch_batches(seed, epoch):
        s = DurationBucketSampler(durations, batch_size=16, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert epoch_batches(0, 3) == epoch_batches(0, 3)
    assert epoch_batches(0, 3) != epoch_batches(0, 4)
    assert epoch_batches(0, 3) != epoch_batches(1, 3)


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("kwargs", [{"batch_size": 32}, {"batch_seconds": 45.0}])
def test_ddp_ranks_are_disjoint_equal_and_cover_everything(durations, replicas, kwargs):
    # 1003 clips / 32 = 32 batches: 3 replicas need one batch of padding, 2 replicas none
    ranks = []
    for rank in range(replicas):
        s = DurationBucketSampler(durations, seed=5, num_replicas=replicas, rank=rank, **kwargs)
        s.set_epoch(2)
        ranks.append(list(s))
    assert len({len(r) for r in ranks}) == 1
    assert len(ranks[0]) == len(DurationBucketSampler(durations, num_replicas=replicas, **kwargs))
    every = [tuple(b) for r in ranks for b in r]
    assert set(flat(every)) == set(range(len(durations)))
    unique = set(every)
    # padding repeats whole batches, fewer than `replicas` of them; no other clip is shared between batches
    assert len(every) - len(unique) < replicas
    assert sorted(flat(unique)) == list(range(len(durations)))
    if kwargs.get("batch_size") == 32:
        assert len(every) - len(unique) == (-32) % replicas


def test_ddp_drop_last_repeats_nothing(durations):
    ranks = [
        list(DurationBucketSampler(durations, batch_size=32, num_replicas=3, rank=r, drop_last=True)) for r in range(3)
    ]
    every = flat(flat(ranks))
    assert len(every) == len(set(every)) == 31 // 3 * 3 * 32  # the partial batch and the incomplete step go
    assert all(len(b) == 32 for r in ranks for b in r)


@pytest.mark.parametrize("kwargs", [{"batch_size": 32}, {"batch_seconds": 60.0, "num_replicas": 2, "rank": 1}])
def test_resume_mid_epoch(durations, kwargs):
    sampler = DurationBucketSampler(durations, seed=7, **kwargs)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.set_epoch(5)
    sampler.set_epoch(4)
    taken = list(islice(iter(sampler), 5))
    state = sampler.state_dict()
    assert state["epoch"] == 4 and state["position"] == 5

    resumed = DurationBucketSampler(durations, seed=7, **kwargs)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # the training loop's call for the resumed epoch keeps the position
    rest = list(resumed)
    assert taken + rest == full
    assert list(resumed) == []  # the epoch is spent
    resumed.set_epoch(5)
    assert len(list(resumed)) == len(resumed)


def test_resume_refuses_a_different_setup_mid_epoch(durations):
    sampler = DurationBucketSampler(durations, batch_size=32)
    next(iter(sampler))
    with pytest.raises(ValueError, match="different sampler setup"):
        DurationBucketSampler(durations, batch_size=16).load_state_dict(sampler.state_dict())
    DurationBucketSampler(durations, batch_size=16).load_state_dict({**sampler.state_dict(), "position": 0})


def test_batch_seconds_respects_the_budget(durations):
    d = np.array(durations)
    batches = list(DurationBucketSampler(durations, batch_seconds=60.0))
    for b in batches:
        assert d[b].max() * len(b) <= 60.0 or len(b) == 1
    # and fills it: the batches are not much smaller than the budget allows
    assert np.mean([d[b].max() * len(b) for b in batches]) > 0.8 * 60.0


def test_a_clip_longer_than_the_budget_gets_its_own_batch():
    batches = list(DurationBucketSampler([1.0, 1.0, 30.0, 1.0], batch_seconds=10.0))
    assert sorted(map(sorted, batches)) == [[0, 1, 3], [2]]


def test_batch_size_caps_batch_seconds(durations):
    assert max(len(b) for b in DurationBucketSampler(durations, batch_size=4, batch_seconds=1000.0)) == 4
