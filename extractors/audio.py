"""VGGish-architecture audio embeddings, written in this project (``audio`` modality).

Input features, exactly as VGGish's ``vggish_input.waveform_to_examples`` defines them:
16 kHz mono waveform (other rates are resampled with ``torchaudio.functional.resample``) ->
frames of 25 ms (400 samples) every 10 ms (160 samples), no padding, periodic Hann window,
|rfft| with 512 points (magnitude, not power) -> 64 mel bands from 125 to 7500 Hz (HTK mel
scale, triangles linear in mel, DC bin zeroed: VGGish's ``spectrogram_to_mel_matrix``; torchaudio's
``melscale_fbanks`` draws its triangles linear in Hz, so the VGGish matrix is built here) ->
``log(mel + 0.01)`` -> non-overlapping examples of 96 frames (0.96 s), shape ``[N, 1, 96, 64]``.
A track with sound but shorter than one example is zero-padded to one example. Examples are cut
from the decoder's windows as they arrive: a window's samples are joined to the carried-over tail
and every complete example is computed (the log-mel framing restarts at each example boundary, a
multiple of the hop, so the frames are those of the whole track); the rest is carried over.

Network (VGGish, Hershey et al. 2017): conv3x3 64 - pool - conv 128 - pool - conv 256 x2 - pool -
conv 512 x2 - pool (all ReLU, 2x2 max pools), flatten in [H, W, C] order (as TensorFlow), FC 4096 -
ReLU - FC 4096 - ReLU - FC 128 (no activation on the embedding layer, as in ``vggish_slim.py``).
Output: ``[N, 128]`` per 0.96 s window, the raw embedding (the AudioSet PCA/quantisation
post-processing is not applied).

Weights file (``--weights audio=PATH``): a state dict (``torch.save(state_dict)``, loaded with
``weights_only=True``, or ``.safetensors``) with torchvggish's names:
``features.{0,3,6,8,11,13}.{weight,bias}`` (conv layers) and ``embeddings.{0,2,4}.{weight,bias}``
(FC layers), e.g. the converted AudioSet release ``vggish-10086976.pth``. Extra keys (``pca_*``)
are ignored; missing or mis-shaped keys are an error naming them.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
import torchaudio
from torch import nn

from data.modalities import AUDIO
from data.store import FeatureRow
from extractors.base import Extractor, VideoItem
from extractors.weights import Weights, cached_local_model
from extractors.decode import DecodedChunk, DecodeRequest

SAMPLE_RATE = 16_000
WINDOW = 400          # 25 ms
HOP = 160             # 10 ms
FFT = 512
MEL_BANDS = 64
MEL_MIN_HZ, MEL_MAX_HZ = 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96   # 0.96 s
EXAMPLE_S = EXAMPLE_FRAMES * HOP / SAMPLE_RATE
EXAMPLE_HOP = EXAMPLE_FRAMES * HOP                 # samples between example starts (15,360)
EXAMPLE_SPAN = (EXAMPLE_FRAMES - 1) * HOP + WINDOW  # samples one example reads (15,600)


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(hz / 700.0)


def vggish_mel_matrix() -> torch.Tensor:
    """``[257, 64]`` float64 mel weights as VGGish's ``spectrogram_to_mel_matrix``."""
    n_bins = FFT // 2 + 1
    bins_mel = _hz_to_mel(torch.linspace(0.0, SAMPLE_RATE / 2, n_bins, dtype=torch.float64))
    edges = torch.linspace(float(_hz_to_mel(torch.tensor(MEL_MIN_HZ))), float(_hz_to_mel(torch.tensor(MEL_MAX_HZ))),
                           MEL_BANDS + 2, dtype=torch.float64)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bins_mel[:, None]) / (upper - centre)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    weights[0] = 0.0
    return weights


_MEL = vggish_mel_matrix().float()
_WINDOW_FN = torch.hann_window(WINDOW, periodic=True)


def log_mel(waveform: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """``[n_samples]`` mono float waveform -> ``[n_frames, 64]`` VGGish log-mel frames."""
    if sample_rate != SAMPLE_RATE:
        waveform = torchaudio.functional.resample(waveform, sample_rate, SAMPLE_RATE)
    if waveform.numel() < WINDOW:
        return torch.zeros(0, MEL_BANDS)
    frames = waveform.float().unfold(0, WINDOW, HOP) * _WINDOW_FN   # [n_frames, 400]
    magnitude = torch.fft.rfft(frames, n=FFT).abs()                  # [n_frames, 257]
    return torch.log(magnitude @ _MEL + LOG_OFFSET)


def examples(waveform: torch.Tensor, sample_rate: int = SAMPLE_RATE, pad_short: bool = True) -> torch.Tensor:
    """``[n_samples]`` -> ``[N, 1, 96, 64]`` non-overlapping 0.96 s log-mel examples.

    ``pad_short``: a non-empty waveform shorter than one example is zero-padded to one example.
    """
    if pad_short and 0 < waveform.numel() < EXAMPLE_SPAN:
        waveform = torch.nn.functional.pad(waveform, (0, EXAMPLE_SPAN - waveform.numel()))
    mel = log_mel(waveform, sample_rate)
    n = mel.shape[0] // EXAMPLE_FRAMES
    return mel[: n * EXAMPLE_FRAMES].reshape(n, 1, EXAMPLE_FRAMES, MEL_BANDS)


class VGGish(nn.Module):
    """VGGish network: ``[N, 1, 96, 64]`` log-mel examples -> ``[N, 128]`` embeddings."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for block in ((64,), (128,), (256, 256), (512, 512)):
            for width in block:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 6 * 4, 4096), nn.ReLU(inplace=True),
                                        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 128))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)                           # [N, 512, 6, 4]
        x = x.permute(0, 2, 3, 1).flatten(1)           # TensorFlow's [H, W, C] flattening order
        return self.embeddings(x)


def load_vggish(weights: Weights, device: torch.device, precision: str) -> VGGish:
    """VGGish with ``weights`` (random: seeded init; a file: torchvggish state-dict names, PCA dropped)."""
    return cached_local_model(AUDIO, ("vggish",), weights, VGGish,
                              lambda state: {k: v for k, v in state.items() if not k.startswith("pca_")},
                              device, precision)


class AudioExtractor(Extractor):
    """``audio``: ``[N, 128]`` VGGish embeddings per 0.96 s window; ``has_audio`` per video."""

    modality = AUDIO
    code_version = "audio/1"
    extra_columns = {"has_audio": pa.bool_()}

    def __init__(self, model_name: str, weights: Weights, device: torch.device, precision: str,
                 batch_size: int | None = None):
        if model_name != "vggish":
            raise ValueError(f"audio model {model_name!r}: only 'vggish' is implemented")
        super().__init__(model_name, weights, device, precision, batch_size or 32)
        self.model = load_vggish(weights, device, precision)

    @property
    def dim(self) -> int:
        return 128

    @property
    def request(self) -> DecodeRequest:
        return DecodeRequest(audio_rate=SAMPLE_RATE)

    def extra_params(self) -> dict:
        return {"sample_rate": SAMPLE_RATE, "window_s": 0.025, "hop_s": 0.01, "mel_bands": MEL_BANDS,
                "mel_range_hz": [MEL_MIN_HZ, MEL_MAX_HZ], "log_offset": LOG_OFFSET,
                "example_s": EXAMPLE_S, "pad_short": True}

    def units(self, item: VideoItem, chunk: DecodedChunk, state: dict) -> tuple[torch.Tensor, np.ndarray]:
        """Complete examples of the carried-over + new samples: ``[n, 1, 96, 64]`` and their start times."""
        if not item.decoded.has_audio or not len(chunk.audio):
            return torch.zeros(0, 1, EXAMPLE_FRAMES, MEL_BANDS), np.zeros(0)
        if item.decoded.audio_rate != SAMPLE_RATE:
            raise ValueError(f"audio at {item.decoded.audio_rate} Hz: the decoder must deliver {SAMPLE_RATE} Hz")
        tail = state.get("tail")
        wave = torch.from_numpy(np.concatenate([tail, chunk.audio]) if tail is not None else chunk.audio)
        state["samples"] = state.get("samples", 0) + len(chunk.audio)
        n = (len(wave) - EXAMPLE_SPAN) // EXAMPLE_HOP + 1 if len(wave) >= EXAMPLE_SPAN else 0
        state["tail"] = wave[n * EXAMPLE_HOP:].numpy().copy()
        return self._examples(wave[:(n - 1) * EXAMPLE_HOP + EXAMPLE_SPAN] if n else wave[:0], state, pad=False)

    def last_units(self, item: VideoItem, state: dict) -> tuple[torch.Tensor, np.ndarray]:
        """A track with sound shorter than one example: that track zero-padded to one example."""
        if state.get("done", 0) or not 0 < state.get("samples", 0) < EXAMPLE_SPAN:
            return torch.zeros(0, 1, EXAMPLE_FRAMES, MEL_BANDS), np.zeros(0)
        return self._examples(torch.from_numpy(state["tail"]), state, pad=True)

    def _examples(self, wave: torch.Tensor, state: dict, pad: bool) -> tuple[torch.Tensor, np.ndarray]:
        units = examples(wave, SAMPLE_RATE, pad_short=pad)
        done = state.get("done", 0)
        state["done"] = done + len(units)
        return units, (done + np.arange(len(units))) * EXAMPLE_S

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """``[B, 1, 96, 64]`` -> ``[B, 128]`` float32 (CPU)."""
        return self.model(batch.to(self.device, self.dtype)).float().cpu()

    def to_rows(self, item: VideoItem, outputs: list, times: np.ndarray) -> list[FeatureRow]:
        return [FeatureRow(item.video_id, torch.stack(outputs).numpy(), times, "ok", None, {"has_audio": True})]

    def no_unit_rows(self, item: VideoItem) -> list[FeatureRow]:
        """No audio stream (or an empty one): ``empty``, ``has_audio`` False; not an error."""
        return [FeatureRow(item.video_id, np.zeros((0, 128), np.float32), np.zeros(0), "empty", None,
                           {"has_audio": False})]

    def failed_extra(self, item: VideoItem) -> dict:
        return {"has_audio": None if item.decoded is None else item.decoded.has_audio}

