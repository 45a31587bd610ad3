"""Peak memory of one decode: hostile MPEG-TS timestamps and long videos.

``python -m bench.decode_memory [--minutes 1,30]``

Generates (bundled FFmpeg) two MPEG-TS files of two 3 s captures joined byte-wise — the second
written 10 hours later (``jump``), or starting 2 s before the 33-bit 90 kHz clock wraps (``wrap``) —
and 64x48, 2 fps H.264 + AAC videos of the given lengths; decodes each in a fresh process for
everything the extractors ask (CLIP frames at 1 fps / 224 px, the 15 fps / 128 px SlowFast stream,
16 kHz audio), streaming the windows and dropping them, and prints the process's peak resident
memory (VmHWM) with what was decoded.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
WRAP_S = 2 ** 33 / 90000  # the MPEG-TS clock wraps after 26.5 hours


def _ffmpeg(*args) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *map(str, args)], check=True)


def hostile_ts(folder: Path, kind: str) -> Path:
    """``jump``: the second 3 s capture 10 hours after the first; ``wrap``: it starts 2 s before the
    clock wraps (its timestamps jump forward by 26.5 h, then back to 0)."""
    parts = []
    for k, offset in enumerate((0, 36000 if kind == "jump" else WRAP_S - 2)):
        part = folder / f"{kind}-{k}.ts"
        _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=3", "-f", "lavfi",
                "-i", f"sine=frequency={440 + 220 * k}:sample_rate=48000:duration=3", "-c:v", "libx264", "-g", "25",
                "-c:a", "aac", "-f", "mpegts", "-output_ts_offset", str(offset), part)
        parts.append(part)
    out = folder / f"{kind}.ts"
    out.write_bytes(b"".join(p.read_bytes() for p in parts))
    return out


def long_video(folder: Path, minutes: float) -> Path:
    path = folder / f"{minutes:g}min.mp4"
    _ffmpeg("-f", "lavfi", "-i", f"testsrc=size=64x48:rate=2:duration={60 * minutes}", "-f", "lavfi",
            "-i", f"sine=frequency=440:sample_rate=8000:duration={60 * minutes}", "-c:v", "libx264",
            "-c:a", "aac", "-b:a", "16k", path)
    return path


def peak_rss(path: Path) -> dict:
    """Decode ``path`` (streamed, windows dropped) in a fresh process: peak RSS (MB) and totals.

    The peak is the child's VmHWM (``ru_maxrss`` would start at the forking parent's size).
    """
    code = f"""
import json, sys
sys.path.insert(0, {str(PROJECT)!r})
from extractors.decode import DecodeRequest, stream_video
request = DecodeRequest(frame_fps=1.0, frame_size=224, dense_fps=15.0, dense_size=128, audio_rate=16000)
n = [0, 0, 0]
with stream_video({str(path)!r}, request) as s:
    for c in s.chunks():
        n = [n[0] + len(c.frames), n[1] + len(c.dense), n[2] + len(c.audio)]
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"rss_mb": int(hwm.split()[1]) / 1024, "frames": n[0], "dense": n[1], "audio_s": n[2] / 16000,
                  "duration_s": s.info.duration_s, "clamped_jumps": s.info.clamped_jumps}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.decode_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", default="1,30", help="lengths of the long videos (default 1,30)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tvr-mem-") as tmp:
        tmp = Path(tmp)
        files = [hostile_ts(tmp, "jump"), hostile_ts(tmp, "wrap")]
        files += [long_video(tmp, float(m)) for m in args.minutes.split(",")]
        print("| file | peak RSS (MB) | CLIP frames | dense frames | audio (s) | timeline (s) | clamped jumps |")
        print("|---|---|---|---|---|---|---|")
        for f in files:
            r = peak_rss(f)
            print(f"| {f.name} | {r['rss_mb']:.0f} | {r['frames']} | {r['dense']} | {r['audio_s']:.1f} | "
                  f"{r['duration_s']:.1f} | {r['clamped_jumps']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
