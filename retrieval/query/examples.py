"""Searches by example: an image, a clip (a file, or a window of an indexed video) and "more like this".

Each lands in the space the corpus was encoded in, and the answer says which (``space``, from
:data:`retrieval.query.search.QUERY_KINDS`):

- **image**: the run's ``clip_frames`` image tower encodes the picture, resized as a video frame is
  (:mod:`extractors.example`); compared by cosine with each indexed video's mean stored frame
  embedding (:meth:`~retrieval.query.search.Searcher.search_frames`). A fused model has no image
  input, so the frame space is what the tower that made the frames can reach.
- **clip**: one decode of the file feeds every video extractor of the run (the same decode options
  and models as its extraction; the steps inside ``[start_s, end_s)`` kept), then the model encodes
  those features as it encodes a stored video (``fusion.api.encode_example``); the video vector is
  searched against the video index (video-to-video). A window of an indexed video is decoded from
  its file the same way.
- **like** ("more like this"): the indexed video's own vector (the build's stored vectors, else
  encoded again from its stored features) as the query, the video itself left out of its results.

Bad input is a :class:`ExampleError` (the service answers 400): bytes that are not an image, a
clip that cannot be decoded or has no frame in the window, a window that is empty, negative or
past the video's end. An id that is not indexed is :class:`~retrieval.query.search.NotIndexed`
(404). The extractors load on the first search by example (never for text queries) and are
imported lazily: this is the query side's one way into ``extractors`` (pyproject.toml contracts).
"""
from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np

from data.modalities import CLIP_FRAMES
from retrieval.query.search import QueryError, Searcher
from retrieval.runs import extractor_infos, fusion_api

END_SLACK_S = 0.5     # a window may end this far past the decoded duration (container rounding)


class ExampleError(QueryError):
    """An example that cannot be searched with (not an image, an undecodable clip, a bad window)."""


def _unit(vector: np.ndarray) -> np.ndarray:
    return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)


def check_window(start_s: float | None, end_s: float | None) -> None:
    """Refuse a window that is half given, not finite, negative or empty (seconds)."""
    if start_s is None and end_s is None:
        return
    if start_s is None or end_s is None:
        raise ExampleError("a window needs both start_s and end_s (seconds)")
    if not (math.isfinite(start_s) and math.isfinite(end_s)) or start_s < 0:
        raise ExampleError(f"window {start_s}-{end_s} s: start and end must be finite seconds, start >= 0")
    if end_s <= start_s:
        raise ExampleError(f"window {start_s:g}-{end_s:g} s: the end must come after the start")


class ExampleSearch:
    """Searches by example over one :class:`Searcher` (its model, build and stored features)."""

    def __init__(self, searcher: Searcher):
        self.searcher = searcher
        self._extractor = None
        self._infos: dict | None = None
        self._lock = threading.Lock()

    def _extractors(self):
        """The run's video extractors, rebuilt once (``extractors.example.ExampleExtractor``)."""
        with self._lock:
            if self._extractor is None:
                from extractors.example import ExampleExtractor   # the query side's one lazy arrow into extractors

                s = self.searcher
                try:
                    self._infos = extractor_infos(s.dataset, s.loaded, s.settings)
                except LookupError as err:
                    raise ExampleError(f"{err}: searches by example need the run's stored extractors") from None
                self._extractor = ExampleExtractor(self._infos, device=s.device)
            return self._extractor

    def image(self, data: bytes, k: int, *, name: str = "image") -> dict:
        """Videos whose frames look most like the encoded image ``data`` (JPEG, PNG, WebP, ...)."""
        from extractors.decode import DecodeError

        extractor = self._extractors()
        try:
            embedding = extractor.image(data)
        except DecodeError as err:
            raise ExampleError(f"{name}: {err}") from None
        return self.searcher.search_frames(_unit(embedding), k, query=f"image {name}")

    def clip(self, path: Path, k: int, *, start_s: float | None = None, end_s: float | None = None,
             name: str | None = None) -> dict:
        """Videos nearest to the clip at ``path`` (a window ``[start_s, end_s)`` of it when given)."""
        from extractors.decode import DecodeError

        check_window(start_s, end_s)
        name = name or Path(path).name
        extractor = self._extractors()
        try:
            features, duration = extractor.clip(Path(path), start_s, end_s)
        except DecodeError as err:
            raise ExampleError(f"{name}: {err}") from None
        if end_s is not None and end_s > duration + END_SLACK_S:
            raise ExampleError(f"{name}: window {start_s:g}-{end_s:g} s ends past the video's end ({duration:.2f} s)")
        vector = fusion_api().encode_example(self.searcher.loaded, features, self._infos)
        frames = features[CLIP_FRAMES][0]
        frames = frames / np.maximum(np.linalg.norm(frames, axis=1, keepdims=True), 1e-12)
        window = f" {start_s:g}-{end_s:g} s" if start_s is not None else ""
        return self.searcher.search_vector(vector, k, query=f"clip {name}{window}", kind="clip",
                                           clip=_unit(frames.mean(axis=0)))

    def video_window(self, video_id: str, k: int, start_s: float | None = None, end_s: float | None = None) -> dict:
        """:meth:`clip` of an indexed video's file (or a window of it)."""
        check_window(start_s, end_s)
        path, _ = self.searcher.video_path(video_id)
        return self.clip(path, k, start_s=start_s, end_s=end_s, name=video_id)

    def like(self, video_id: str, k: int) -> dict:
        """"More like this": the indexed video's own vector as the query, the video left out."""
        s = self.searcher
        state = s.state
        s.video_path(video_id, state)                         # an indexed, present video (else NotIndexed)
        if state.vectors is not None:
            vector = np.asarray(state.vectors[state.build.row[video_id]], np.float32)
        else:
            vectors, found = fusion_api().encode_video_ids(s.loaded, s.dataset, [video_id], settings=s.settings)
            if not found:
                raise ExampleError(f"video {video_id!r} has no stored features to search with")
            vector = vectors[0]
        held = state.frames.frames.get(video_id) if state.frames is not None else None
        clip = _unit(held[0].mean(axis=0)) if held is not None else None
        return s.search_vector(vector, k, query=f"like {video_id}", kind="like", clip=clip, exclude=video_id,
                               state=state)
