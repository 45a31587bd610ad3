"""Decode each video once and encode every modality (CLIP frames + text, VGGish-style audio, SlowFast motion)."""
