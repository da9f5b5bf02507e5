import numpy as np
import pytest
import torch

from proslushka import augment


def _rng(seed=0):
    return np.random.default_rng(seed)


def _band_power(x, lo, hi, sr=16000):
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / sr)
    return spec[(f >= lo) & (f < hi)].mean()


@pytest.mark.parametrize("kind,db_per_octave", [("white", 0.0), ("pink", -3.0), ("brown", -6.0)])
def test_noise_colours_have_their_spectral_slope(kind, db_per_octave):
    x = augment.coloured_noise(16000 * 8, kind, _rng())
    assert abs(np.sqrt(np.mean(x.astype(np.float64) ** 2)) - 1.0) < 1e-3
    slope = 10 * np.log10(_band_power(x, 1000, 1100) / _band_power(x, 500, 550))  # one octave up
    assert abs(slope - db_per_octave) < 0.6


def test_add_at_snr_gives_the_asked_ratio():
    clean = np.sin(np.arange(32000) * 0.05).astype(np.float32) * 0.3
    unit = augment.coloured_noise(len(clean), "pink", _rng())
    for snr in (0.0, 7.5, 30.0):
        mixed = augment.add_at_snr(clean, unit, snr)
        noise = (mixed - clean).astype(np.float64)
        measured = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))
        assert abs(measured - snr) < 0.01
    assert np.array_equal(augment.add_at_snr(np.zeros(10, np.float32), unit[:10], 10), np.zeros(10))


def test_hum_is_mains_frequency_and_babble_sums_the_given_clips():
    h = augment.hum(16000, _rng())
    peak = np.fft.rfftfreq(16000, 1 / 16000)[np.argmax(np.abs(np.fft.rfft(h)))]
    assert peak in (50.0, 60.0)
    tone = np.sin(2 * np.pi * 440 * np.arange(8000) / 16000).astype(np.float32)
    b = augment.babble(16000, _rng(), lambda rng: tone)
    assert abs(np.sqrt(np.mean(b.astype(np.float64) ** 2)) - 1) < 1e-3
    assert np.fft.rfftfreq(16000, 1 / 16000)[np.argmax(np.abs(np.fft.rfft(b)))] == 440.0
    with pytest.raises(ValueError):
        augment.noise(100, "babble", _rng())


def test_silence_join_and_limit():
    assert not augment.silence(100, _rng(), None).any()
    floor = augment.silence(16000, _rng(), -60.0)
    assert abs(20 * np.log10(np.sqrt(np.mean(floor.astype(np.float64) ** 2))) + 60) < 0.1
    a, b, pause = np.ones(3, np.float32), 2 * np.ones(2, np.float32), np.zeros(4, np.float32)
    assert augment.join([a, b], [pause]).tolist() == [1, 1, 1, 0, 0, 0, 0, 2, 2]
    assert np.max(np.abs(augment.limit(np.array([0.5, -3.0])))) == pytest.approx(0.99)
    assert augment.limit(np.array([0.5, -0.2])).tolist() == pytest.approx([0.5, -0.2])


def test_augment_is_a_function_of_its_generator():
    cfg = augment.AugmentConfig(noise_prob=1.0, gain_prob=1.0, silence_prob=1.0, noise_kinds=("pink", "hum"))
    wave = np.sin(np.arange(16000) * 0.1).astype(np.float32) * 0.1
    a = augment.augment(wave, cfg, _rng(5))
    assert np.array_equal(a, augment.augment(wave, cfg, _rng(5)))
    assert not np.array_equal(a, augment.augment(wave, cfg, _rng(6)))
    assert len(a) >= len(wave) and np.max(np.abs(a)) <= 0.99
    assert np.array_equal(augment.augment(wave, augment.AugmentConfig(), _rng(5)), wave)  # all off: unchanged
    with pytest.raises(ValueError):
        augment.AugmentConfig(noise_kinds=("violet",))
    with pytest.raises(ValueError):
        augment.AugmentConfig(noise_prob=1.5)


def test_a_kind_listed_twice_is_drawn_twice_as_often(monkeypatch):
    drawn = []
    real = augment.noise
    monkeypatch.setattr(augment, "noise", lambda n, kind, *a: drawn.append(kind) or real(n, kind, *a))
    cfg = augment.AugmentConfig(noise_prob=1.0, noise_kinds=("white", "hum", "hum", "babble"))
    wave = np.full(800, 0.1, np.float32)
    rng = _rng(1)
    for _ in range(3000):
        augment.augment(wave, cfg, rng)  # no speech for babble: drawn from the other entries only
    assert set(drawn) == {"white", "hum"}
    assert abs(drawn.count("hum") / len(drawn) - 2 / 3) < 0.03
    drawn.clear()
    for _ in range(3000):
        augment.augment(wave, cfg, rng, speech=lambda r: np.ones(1600, np.float32))
    assert (
        abs(drawn.count("hum") / len(drawn) - 1 / 2) < 0.03 and abs(drawn.count("babble") / len(drawn) - 1 / 4) < 0.03
    )


def test_join_groups_partition_the_clips():
    groups = augment.join_groups(10_000, 0.3, seed=1)
    assert sorted(i for g in groups for i in g) == list(range(10_000))
    assert {len(g) for g in groups} == {1, 2, 3}
    assert abs(sum(len(g) > 1 for g in groups) / len(groups) - 0.3) < 0.02
    assert groups == augment.join_groups(10_000, 0.3, seed=1) != augment.join_groups(10_000, 0.3, seed=2)
    assert all(len(g) == 1 for g in augment.join_groups(5, 0.0, seed=1))


def test_dataset_joins_groups_and_is_a_function_of_seed_epoch_index(tmp_path):
    from test_trainer import FOUR, write_manifest

    from proslushka.data import AudioDataset, read_manifest
    from proslushka.text import LABELS, decode

    utts = read_manifest(write_manifest(tmp_path / "m.jsonl", FOUR))
    cfg = augment.AugmentConfig(join_prob=0.5, noise_prob=1.0, silence_prob=1.0, noise_kinds=("babble", "pink"))
    groups = [(1, 0), (2,), (3,)]
    ds = AudioDataset(utts, augment=cfg, seed=3, groups=groups)
    plain = AudioDataset(utts)
    assert len(ds) == 3 and ds.durations[0] == utts[1].duration + utts[0].duration + sum(cfg.pause_seconds) / 2
    wave, ids = ds[0]
    again = AudioDataset(utts, augment=cfg, seed=3, groups=groups)[0]
    assert torch.equal(wave, again[0]) and torch.equal(ids, again[1])  # what a resumed run sees
    assert decode(ids.tolist(), LABELS) == utts[1].text + " " + utts[0].text
    assert len(wave) >= len(plain[1][0]) + len(plain[0][0]) + 0.3 * 16000  # both clips and a pause
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], wave)  # a new epoch draws anew
    assert torch.equal(plain[1][0], AudioDataset(utts, augment=augment.AugmentConfig())[1][0])  # off: unchanged


def test_augmented_run_from_two_manifests_resumes_exactly(tmp_path):
    from test_trainer import FOUR, tiny_cfg, write_manifest

    from proslushka import checkpoint
    from proslushka.trainer import train

    def cfg(folder, **kw):
        two = [write_manifest(tmp_path / "a.jsonl", FOUR[:2]), write_manifest(tmp_path / "b.jsonl", FOUR[2:])]
        return tiny_cfg(folder, train_manifest=two, max_steps=6, noise_prob=0.5, join_prob=0.5, silence_prob=0.5,
                        gain_prob=0.5, **kw)  # fmt: skip

    train(cfg(tmp_path / "x"))
    train(cfg(tmp_path / "y", stop_at_step=3))
    train(cfg(tmp_path / "y", resume=str(tmp_path / "y" / "run" / "last.pt")))
    a, b = (checkpoint.load(tmp_path / d / "run" / "last.pt") for d in ("x", "y"))
    assert a["trainer"]["step"] == b["trainer"]["step"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
