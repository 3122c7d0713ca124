"""The load generator's audio: every device and every turn sounds different (no cache answers for free)."""

from __future__ import annotations

import hashlib
import random

import numpy as np

from scripts.bench_load import UTTERANCES, DeviceVoice, device_clip, poisson_arrivals


def digest(pcm: np.ndarray) -> bytes:
    return hashlib.blake2b(pcm.tobytes(), digest_size=16).digest()  # what the ASR memo keys on


def test_no_two_devices_send_the_same_clip(speak):
    base = speak(UTTERANCES[0])
    clips = [device_clip(base, DeviceVoice.for_device(i), np.random.default_rng([1, i, 1])) for i in range(50)]
    assert len({digest(c) for c in clips}) == len(clips)
    voices = {DeviceVoice.for_device(i) for i in range(50)}
    assert len(voices) == 50  # each device its own gain and noise floor


def test_same_utterance_differs_by_gain_and_noise_but_stays_speech(speak):
    base = speak(UTTERANCES[5])
    loud, quiet = DeviceVoice(gain_db=3.0, snr_db=40.0), DeviceVoice(gain_db=-9.0, snr_db=18.0)
    a = device_clip(base, loud, np.random.default_rng(0))
    b = device_clip(base, quiet, np.random.default_rng(0))
    assert digest(a) != digest(b)
    rms = lambda x: float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))  # noqa: E731
    assert rms(a) > 2 * rms(b)  # the gain is applied
    # the same device speaking twice still differs (fresh noise, another lead-in)
    rng = np.random.default_rng(7)
    assert digest(device_clip(base, quiet, rng)) != digest(device_clip(base, quiet, rng))
    # and it is still the utterance: the clip correlates with the clean speech
    lead = a.size - base.size
    assert np.corrcoef(a[lead:].astype(float), base.astype(float))[0, 1] > 0.9


def test_enough_distinct_utterances():
    assert len(set(UTTERANCES)) == len(UTTERANCES) >= 30


def test_poisson_arrivals_are_open_loop_at_the_asked_rate():
    rng = random.Random(3)
    times = [t for _ in range(200) for t in poisson_arrivals(rng, 2.0, 600.0)]  # 200 devices, 10 min, 2/min
    assert all(0 <= t < 600 for t in times)
    assert 0.9 * 4000 < len(times) < 1.1 * 4000
