"""CLIP (open_clip) image and text extractors.

- :class:`ClipFramesExtractor` (``clip_frames``): one embedding per frame sampled at ``fps``
  (default 1): ``encode_image`` output, i.e. after ``ln_post`` and the projection, ``[T, D]``.
  Frames come from the decoder already resized (shortest side to the model's image size, centre
  crop, the model's interpolation); only the mean/std normalisation happens here, on the device.
- :class:`ClipTextExtractor` (``clip_text``): for each caption, all token embeddings after
  ``ln_final`` and the text projection, ``[L_valid, D]`` with ``L_valid`` = positions SOT..EOT
  inclusive, plus ``eot_index`` = ``L_valid - 1`` (the sentence embedding is the EOT row).
  The text tower runs on the batch's real token length (longest caption in the batch), not the
  full context: under CLIP's causal mask a position never sees later ones, so the valid positions
  are the same as with the full 77-token context (checked in tests/test_extract_models.py).

Weights: ``random`` (seeded, rebuildable), a local state-dict / safetensors file, or an open_clip
pretrained tag (e.g. ``openai``, ``laion2b_s34b_b79k``; needs a machine that can download). A
``local-dir:`` model folder takes ``random`` (refused beside a checkpoint in the folder) or a file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from data.fingerprint import caption_digest
from data.modalities import CLIP_FRAMES, CLIP_TEXT
from data.store import FeatureRow
from extractors.base import Extractor, VideoItem
from extractors.precision import PRECISION_DTYPES
from extractors.weights import Weights, WeightsError, apply_state_dict, load_state_dict_file, seeded_build
from extractors.decode import DecodedChunk, DecodeRequest

LOCAL_DIR = "local-dir:"   # open_clip's schema for a model folder (its config, maybe a checkpoint)
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_CLIP_CACHE: dict[tuple, torch.nn.Module] = {}
_TOKENIZERS: dict[str, object] = {}


def load_clip(model_name: str, weights: Weights, device: torch.device, precision: str) -> torch.nn.Module:
    """An open_clip model in eval mode on ``device`` (cached per process: one load per process)."""
    import open_clip

    weights.check_file()  # every time: a changed file must not hide behind the cache
    key = (model_name, weights, str(device), precision)
    if key not in _CLIP_CACHE:
        if model_name.startswith(LOCAL_DIR):
            build = _local_dir_build(model_name, weights)
        else:
            def build():
                pretrained = None if weights.is_random else weights.source
                return open_clip.create_model(model_name, pretrained=pretrained, device="cpu")
        try:
            model = seeded_build(weights, build).eval()
        except WeightsError:
            raise
        except Exception as err:   # open_clip raises many kinds for an unusable file or unknown tag
            raise WeightsError(f"{model_name} weights {weights.source!r}: cannot be loaded ({err}); give "
                               "'random', a local open_clip checkpoint, or a tag this machine has") from err
        model = model.to(device, PRECISION_DTYPES[precision])
        _CLIP_CACHE[key] = model
    return _CLIP_CACHE[key]


def _local_dir_build(model_name: str, weights: Weights):
    """The builder of an open_clip ``local-dir:`` folder model whose weights are exactly ``weights``.

    open_clip ignores its ``pretrained`` argument for such a folder and loads a checkpoint it finds
    inside, so the folder's config is built without weights (seeded when random) and a weights file
    is loaded here, strictly. Refused (:class:`WeightsError`): a pretrained tag (it needs a built-in
    model name) and ``random`` beside a checkpoint in the folder (it would load while the extractor
    records random weights)."""
    import open_clip

    folder = Path(model_name[len(LOCAL_DIR):]).expanduser()
    if not weights.is_random and not weights.is_file:
        raise WeightsError(f"{model_name}: a pretrained tag ({weights.source!r}) needs a built-in model name; "
                           f"a local-dir: folder takes 'random' or a weights file")
    held = sorted(p for p in folder.glob("*") if p.suffix in CHECKPOINT_SUFFIXES) if folder.is_dir() else []
    if weights.is_random and held:
        raise WeightsError(f"{model_name} holds weights ({held[0].name}) that open_clip would load while the "
                           f"extractor records random ones: pass them as the weights file ({held[0]}), or use "
                           f"a folder with the config only for random weights")

    def build():
        model = open_clip.create_model(model_name, device="cpu", load_weights=False)
        if weights.is_file:
            apply_state_dict(model, load_state_dict_file(weights.source), weights.source)
        return model
    return build


class _ClipBase(Extractor):
    default_batch_size = 32

    def __init__(self, model_name: str, weights: Weights, device: torch.device, precision: str,
                 batch_size: int | None = None):
        super().__init__(model_name, weights, device, precision, batch_size or self.default_batch_size)
        self.model = load_clip(model_name, weights, device, precision)

    @property
    def dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.nn.Linear):
            return proj.out_features
        if proj is not None:
            return int(proj.shape[1])
        return int(self.model.visual.output_dim)


class ClipFramesExtractor(_ClipBase):
    """``clip_frames``: ``[T, D]`` image embeddings of the frames sampled at ``fps``."""

    modality = CLIP_FRAMES
    code_version = "clip_frames/1"

    def __init__(self, model_name, weights, device, precision, batch_size=None, fps: float = 1.0):
        super().__init__(model_name, weights, device, precision, batch_size)
        from open_clip import get_model_preprocess_cfg

        cfg = get_model_preprocess_cfg(self.model)
        size = cfg.get("size", 224)
        self.size = int(size if isinstance(size, int) else min(size))
        self.fps = float(fps)
        self.interpolation = str(cfg.get("interpolation", "bicubic")).upper()
        mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
        self.mean = (mean * 255).view(1, 3, 1, 1).to(device)
        self.inv_std = (1 / (std * 255)).view(1, 3, 1, 1).to(device)

    @property
    def dim(self) -> int:
        return int(self.model.visual.output_dim)

    @property
    def request(self) -> DecodeRequest:
        return DecodeRequest(frame_fps=self.fps, frame_size=self.size, interpolation=self.interpolation)

    def extra_params(self) -> dict:
        return {"fps": self.fps, "size": self.size, "resize": f"short side + centre crop, {self.interpolation}"}

    def units(self, item: VideoItem, chunk: DecodedChunk, state: dict) -> tuple[torch.Tensor, np.ndarray]:
        """``[t, S, S, 3]`` uint8 frames of the window and their ``[t]`` times."""
        return torch.from_numpy(chunk.frames), chunk.frame_times

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """``[B, S, S, 3]`` uint8 -> ``[B, D]`` float32 (CPU)."""
        x = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = ((x - self.mean) * self.inv_std).to(self.dtype)
        return self.model.encode_image(x).float().cpu()

    def to_rows(self, item: VideoItem, outputs: list, times: np.ndarray) -> list[FeatureRow]:
        return [FeatureRow(item.video_id, torch.stack(outputs).numpy(), times)]


class ClipTextExtractor(_ClipBase):
    """``clip_text``: one row per caption, ``[L_valid, D]`` token embeddings + ``eot_index``."""

    modality = CLIP_TEXT
    code_version = "clip_text/1"
    default_batch_size = 64
    extra_columns = {"caption_index": pa.int32(), "eot_index": pa.int32(), "caption": pa.string()}

    def __init__(self, model_name, weights, device, precision, batch_size=None):
        super().__init__(model_name, weights, device, precision, batch_size)
        import open_clip

        for name in ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask"):
            if getattr(self.model, name, None) is None:
                raise ValueError(f"open_clip model {model_name!r} has no CLIP text tower ({name} missing); "
                                 f"clip_text supports CLIP-style models only")
        if model_name not in _TOKENIZERS:  # building one reads the BPE vocabulary: once per process
            _TOKENIZERS[model_name] = open_clip.get_tokenizer(model_name)
        self.tokenizer = _TOKENIZERS[model_name]
        self.context_length = int(self.model.positional_embedding.shape[0])

    def extra_params(self) -> dict:
        return {"context_length": self.context_length, "pool": getattr(self.model, "text_pool_type", "argmax")}

    def decode_error(self, item: VideoItem) -> str | None:
        return None  # captions do not depend on the video file

    def units(self, item: VideoItem, chunk: DecodedChunk, state: dict) -> tuple[list, None]:
        return [], None  # text rows do not depend on the video

    def last_units(self, item: VideoItem, state: dict) -> tuple[list[tuple[int, str]], None]:
        """The video's captions to encode: those the run asked for, else all of them."""
        return item.captions.get(self.modality, list(enumerate(item.record.captions))), None

    def collate(self, parts: list) -> list[tuple[int, str]]:
        return [u for part in parts for u in part]

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B]`` index of the end-of-text token of each ``[B, ctx]`` token row."""
        if getattr(self.model, "text_pool_type", "argmax") == "eos":
            return (tokens == self.model.text_eos_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)  # CLIP's EOT id is the largest in the vocabulary

    def token_embeddings(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, ctx]`` tokens -> (``[B, L, D]`` projected token embeddings, ``[B]`` EOT index).

        ``L`` is the longest valid length in the batch; rows are exact up to their own EOT.
        """
        m = self.model
        eot = self.eot_positions(tokens)
        length = int(eot.max()) + 1
        tokens = tokens[:, :length].to(self.device)
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:length].to(cast)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        proj = m.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        return x, eot

    def forward(self, batch: list[tuple[int, str]]) -> list[tuple[int, str, np.ndarray, int]]:
        """Captions -> ``(caption_index, caption, [L_valid, D] float32, eot_index)`` each."""
        tokens = self.tokenizer([cap for _, cap in batch], context_length=self.context_length)
        x, eot = self.token_embeddings(tokens)
        x = x.float().cpu().numpy()
        return [(i, cap, x[k, :int(eot[k]) + 1].copy(), int(eot[k])) for k, (i, cap) in enumerate(batch)]

    def to_rows(self, item: VideoItem, outputs: list, times: np.ndarray) -> list[FeatureRow]:
        return [FeatureRow(item.video_id, values, np.zeros(0), "ok", None,
                           {"caption_index": i, "eot_index": eot, "caption": cap}, caption_digest(i, cap))
                for i, cap, values, eot in outputs]

    def failed_extra(self, item: VideoItem) -> dict:
        return {"caption_index": -1, "eot_index": -1}

    def encode(self, captions: list[str]) -> list[tuple[np.ndarray, int]]:
        """Free text -> ``[(values [L_valid, D] float32, eot_index)]``, batched like extraction."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(captions), self.batch_size):
                chunk = list(enumerate(captions[start:start + self.batch_size]))
                out += [(values, eot) for _, _, values, eot in self.forward(chunk)]
        return out
