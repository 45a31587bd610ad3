"""Fusion models (zero-shot, meanP, seqTransf, M2HF, HCMI), losses, training loop, checkpoints."""
