"""A written build (contract D) in plain words for the people who search it: how a query is answered,
the recall to expect, the memory it takes. ``python -m retrieval.index`` prints
:func:`describe_build` after a build; the FAISS names (``nlist``, ``nprobe``, ``PQ``, ``efSearch``)
appear only in brackets, after what they mean.

Units: recall@10 is the share of the exact top 10 that the index returns (1.0 = exact), measured by
``--tune`` on held-out queries (``info.json["tuning"]``); memory in MB (10^6 bytes) of the files the
reader reads into memory (or memory-maps, above ``TVR_INDEX_MMAP_GB``).
"""
from __future__ import annotations

from pathlib import Path

from retrieval.index.layout import VECTORS_FILE, mmap_threshold_bytes

MB = 1e6


def how_it_searches(index_type: str, params: dict) -> str:
    """How a query is answered by an index of ``index_type`` (``+``-joined for a build in parts of
    several types) with search ``params``."""
    kinds = index_type.split("+")
    words = "; ".join(_kind_words(kind, params) for kind in kinds)
    return f"{len(kinds)} kinds of parts, results merged: {words}" if len(kinds) > 1 else words


def _kind_words(kind: str, params: dict) -> str:
    if kind == "flat":
        return "exact: every query is compared with every video"
    if kind == "hnsw":
        links = f" linking each video to about {params['M']} neighbours" if "M" in params else ""
        return (f"approximate: a graph{links}; a query explores {params.get('efSearch', 'a few')} candidates "
                f"(more: higher recall, slower) [HNSW, efSearch]")
    if kind in ("ivf", "ivfpq"):
        groups = (f"{params['nlist']} clusters and a query looks only into the {params['nprobe']} closest (about "
                  f"{min(1.0, params['nprobe'] / params['nlist']):.0%} of the videos)" if "nlist" in params else
                  f"clusters and a query looks only into the {params.get('nprobe', 'few')} closest")
        words = f"approximate: the videos are grouped in {groups} [IVF, nlist, nprobe]"
        if kind == "ivfpq":
            words += (f"; each vector is compressed to {params.get('pq', 'a few')} bytes, so scores are approximate "
                      f"[PQ]" + (f", and the best {params['rerank']} are scored again exactly from {VECTORS_FILE}"
                                 if params.get("rerank") else ""))
        return words
    return f"as the FAISS factory string {params.get('factory', kind)!r} defines"


def expected_recall(info: dict) -> str:
    """The recall@10 to expect: measured by ``--tune`` at the chosen setting, exact for flat, else unknown."""
    tuning = info.get("tuning")
    if tuning:
        chosen = tuning["chosen"]
        point = next(c for c in tuning["curve"] if all(c.get(k) == v for k, v in chosen.items()))
        setting = " at " + ", ".join(f"{k} {v}" for k, v in chosen.items()) if chosen else ""
        reached = "" if tuning["reached"] else ", NOT reached: the most accurate setting tried"
        return (f"about {point['recall']:.3f} of the true top 10 is found (recall@10{setting}, "
                f"{point['ms_per_query']:.2f} ms per query; measured on {tuning['queries']} held-out queries, "
                f"target {tuning['target']}{reached})")
    if info["index_type"] == "flat":
        return "1.0, the true top 10 (exact search)"
    return "not measured; add --tune 0.95 to measure recall@10 on held-out queries and pick the fastest setting"


def _mb(size: int) -> str:
    return f"{size / MB:,.2f} MB"


def memory_used(folder: Path) -> str:
    """The sizes of the build's index files and of its stored vectors, in MB."""
    index = sum(p.stat().st_size for p in folder.iterdir() if p.name == "index.faiss" or p.name.startswith("part-"))
    held = ("memory-mapped from disk (larger than TVR_INDEX_MMAP_GB)" if index > mmap_threshold_bytes() else
            "read into memory by search and the service")
    words = f"{_mb(index)} of index, {held}"
    vectors = folder / VECTORS_FILE
    if vectors.is_file():
        words += f"; {_mb(vectors.stat().st_size)} of stored vectors ({VECTORS_FILE}, memory-mapped)"
    return words


def describe_build(folder: Path, info: dict) -> list[str]:
    """The lines printed after a build of ``folder`` whose ``info.json`` is ``info``."""
    params = info["params"]
    lines = [f"index {folder}: {info['n_vectors']:,} videos x {info['dim']}-d vectors, built in "
             f"{info['build_seconds']} s",
             f"  search: {how_it_searches(info['index_type'], params)}",
             f"  recall: {expected_recall(info)}",
             f"  memory: {memory_used(folder)}",
             f"  why this index: {params.get('reason', 'chosen by name')}"]
    if "partitions" in info:
        p = info["partitions"]
        lines.append(f"  parts: {p['count']} ({p['shards']} shards, zero-block groups: {p['zero_blocks']}); "
                     f"bytes per video {p['bytes_per_video_before']} as one vector, {p['bytes_per_video_after']} "
                     f"stored")
    return lines
