"""Where the speech is: an energy detector over an adaptive noise floor, streaming, numpy only.

A frame is active when its energy rises THRESHOLD_DB above the noise floor and above ABS_FLOOR_DB (digital
silence and near-silence never count). The floor follows the energy down at once and creeps up by RISE_DB_PER_S,
so it settles on the quiet between words whatever the room's noise level. Energy is measured around each frame's
own mean: a DC offset (cheap microphones and some sound cards add one, 0.5 of full scale is not unheard of) would
otherwise read as loud steady "noise" and drown the speech under the floor. Long audio is then cut into chunks of
speech (segment.py), so the model is never fed long stretches of silence as if they were speech.
"""

from __future__ import annotations

import numpy as np

THRESHOLD_DB = 6.0  # above the floor: a vowel at 5 dB SNR still clears it
ABS_FLOOR_DB = -60.0  # dBFS RMS: quieter frames are never speech
RISE_DB_PER_S = 1.0  # slow enough that 20 s of continuous speech lifts the floor by only 20 dB of its dips
SILENCE_DB = -100.0  # the energy of digital silence (log of the 1e-10 guard)


def frame_energy_db(x: np.ndarray, frame: int) -> np.ndarray:
    """RMS energy in dBFS of each whole frame of `x` around the frame's mean (a partial last frame is left out).

    The mean removal is a block-wise high-pass: it takes out the DC and most of what lies below ~50 Hz (rumble,
    drift), and leaves speech alone: its lowest voices are near 100 Hz, two whole periods in a 20 ms frame."""
    n = len(x) // frame
    frames = x[: n * frame].astype(np.float64).reshape(n, frame)
    return 10 * np.log10(frames.var(axis=1) + 1e-10)


class SpeechDetector:
    """Feed energies frame by frame (in any number of calls); get back which frames are speech."""

    def __init__(self, frame_seconds: float, threshold_db: float = THRESHOLD_DB, rise_db_per_s: float = RISE_DB_PER_S):
        self.rise = rise_db_per_s * frame_seconds
        self.threshold = threshold_db
        self.floor: float | None = None

    def active(self, energy_db: np.ndarray) -> np.ndarray:
        out = np.zeros(len(energy_db), dtype=bool)
        floor = self.floor
        for i, e in enumerate(energy_db.tolist()):  # a Python loop: ~50k frames a second, 3 ms per minute of audio
            floor = e if floor is None else min(floor + self.rise, e)
            out[i] = e > floor + self.threshold and e > ABS_FLOOR_DB
        self.floor = floor
        return out
