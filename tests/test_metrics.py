"""Metrics: Fréchet distance against closed forms, mel features of a sine, SNR of known noise, and the tonal
measures on signals whose answer is known."""

import numpy as np
import pytest

from lmdm_engine.core.metrics import (frechet_distance, harmonicity, hz_to_mel, level_db, log_mel, mel_filterbank,
                                      mel_statistics, mel_to_hz, pitch_kept, pitch_track, snr_db, spectral_flatness,
                                      stft_magnitude)


def random_stats(rng, d):
    a = rng.normal(size=(d, d))
    return rng.normal(size=d), a @ a.T + 0.1 * np.eye(d)


def test_frechet_identical_is_zero():
    rng = np.random.default_rng(0)
    mu, cov = random_stats(rng, 16)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)


def test_frechet_symmetric_and_matches_product_eigenvalues():
    rng = np.random.default_rng(1)
    mu1, cov1 = random_stats(rng, 12)
    mu2, cov2 = random_stats(rng, 12)
    d12 = frechet_distance(mu1, cov1, mu2, cov2)
    assert d12 == pytest.approx(frechet_distance(mu2, cov2, mu1, cov1), rel=1e-9)
    # tr (c1^1/2 c2 c1^1/2)^1/2 = sum of square roots of the (real, non-negative) eigenvalues of c1 c2.
    cross = np.sqrt(np.linalg.eigvals(cov1 @ cov2).real.clip(0)).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * cross
    assert d12 == pytest.approx(expected, rel=1e-8)


def test_frechet_mean_shift_with_equal_covariances():
    rng = np.random.default_rng(2)
    mu, cov = random_stats(rng, 8)
    shift = rng.normal(size=8)
    for scale in (0.5, 1.0, 3.0):
        dmu = scale * shift
        assert frechet_distance(mu, cov, mu + dmu, cov) == pytest.approx(np.sum(dmu**2), rel=1e-7)


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.1, 4.0, size=(2, 10))
    mu1, mu2 = rng.normal(size=(2, 10))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_mel_statistics_shapes_and_values():
    frames = np.random.default_rng(4).normal(size=(500, 5))
    mu, cov = mel_statistics(frames)
    assert mu.shape == (5,) and cov.shape == (5, 5)
    np.testing.assert_allclose(cov, np.cov(frames.T))
    with pytest.raises(ValueError):
        mel_statistics(np.zeros(10))


def test_mel_filterbank_shape_and_placement():
    sr, n_fft = 22050, 1024
    bank = mel_filterbank(sr, n_fft, 40, fmin=50.0, fmax=8000.0)
    assert bank.shape == (40, n_fft // 2 + 1) and np.all(bank >= 0)
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    assert np.all(bank.sum(axis=1) > 0), "every band covers at least one bin"
    assert not bank[:, (freqs < 50.0) | (freqs > 8000.0)].any()
    np.testing.assert_allclose(mel_to_hz(hz_to_mel([0.0, 440.0, 8000.0])), [0.0, 440.0, 8000.0])
    with pytest.raises(ValueError):
        mel_filterbank(sr, n_fft, 40, fmax=sr)


@pytest.mark.parametrize("freq", [220.0, 1000.0, 5000.0])
def test_log_mel_of_sine_peaks_in_its_band(freq):
    sr, n_mels = 22050, 64
    t = np.arange(sr) / sr
    features = log_mel(np.sin(2 * np.pi * freq * t), sr, n_mels=n_mels)
    assert features.shape == (1 + sr // 256, n_mels)
    edges = mel_to_hz(np.linspace(0.0, hz_to_mel(sr / 2), n_mels + 2))
    expected = int(np.argmin(np.abs(edges[1:-1] - freq)))  # the band whose centre is nearest the tone
    assert abs(int(np.argmax(features.mean(axis=0))) - expected) <= 1


def test_log_mel_pools_leading_axes_and_floors_silence():
    sr = 8000
    clips = np.zeros((3, 2000))
    features = log_mel(clips, sr, n_fft=256, hop=64, n_mels=16)
    assert features.shape == (3 * (1 + 2000 // 64), 16)
    np.testing.assert_allclose(features, np.log(1e-5))


def test_stft_magnitude_of_sine():
    sr, n_fft = 16000, 512
    k = 40  # a tone exactly on bin k
    t = np.arange(sr) / sr
    mag = stft_magnitude(np.sin(2 * np.pi * k * sr / n_fft * t), n_fft, 128)
    assert mag.shape == (1 + sr // 128, n_fft // 2 + 1)
    assert np.all(np.argmax(mag[4:-4], axis=1) == k)
    # Hann window sum n_fft / 2, sine amplitude 1: peak |X| = n_fft / 4.
    np.testing.assert_allclose(mag[4:-4, k], n_fft / 4, rtol=1e-6)


def test_snr_of_known_noise_level():
    rng = np.random.default_rng(5)
    signal = np.sin(2 * np.pi * 440 * np.arange(48000) / 48000)  # power 0.5
    for target in (0.0, 10.0, 30.0):
        noise = rng.normal(size=signal.shape)
        noise *= np.sqrt(0.5 / 10 ** (target / 10) / np.mean(noise**2))
        assert snr_db(signal, signal + noise) == pytest.approx(target, abs=1e-9)
    assert snr_db(signal, signal) == float("inf")
    assert snr_db(signal, 0.5 * signal) == pytest.approx(20 * np.log10(2))
    with pytest.raises(ValueError):
        snr_db(signal, signal[:-1])


# ---- tonal measures (bench_sound.py) -------------------------------------------------------------------------
SR = 22050


def _sine(hz, seconds=1.0, sr=SR):
    return (0.3 * np.sin(2 * np.pi * hz * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def test_flatness_tells_tones_from_noise():
    noise = np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.1
    assert spectral_flatness(noise, SR) == pytest.approx(0.56, abs=0.03)  # e^-gamma for a Hann-windowed white spectrum
    assert spectral_flatness(_sine(440), SR) < 1e-3  # one partial over a 60 dB floor
    assert np.isnan(spectral_flatness(np.zeros(SR, np.float32), SR))


def test_harmonicity_of_tone_and_noise():
    noise = np.random.default_rng(1).standard_normal(SR) * 0.1
    assert harmonicity(_sine(220), SR) > 0.99
    assert harmonicity(noise, SR) < 0.2


def test_pitch_track_and_pitch_kept():
    f0, voiced = pitch_track(_sine(220), SR)
    assert voiced.all() and np.allclose(f0, 220, rtol=1e-3)
    assert not pitch_track(np.random.default_rng(2).standard_normal(SR) * 0.1, SR)[1].any()
    assert pitch_kept(_sine(220), _sine(220 * 2 ** (20 / 1200)), SR) == 1.0  # 20 cents: kept
    assert pitch_kept(_sine(220), _sine(220 * 2 ** (1 / 12)), SR) == 0.0  # a semitone: not kept
    assert np.isnan(pitch_kept(np.zeros(SR), _sine(220), SR))


def test_level_db():
    assert level_db(_sine(100)) == pytest.approx(20 * np.log10(0.3 / np.sqrt(2)), abs=0.01)
