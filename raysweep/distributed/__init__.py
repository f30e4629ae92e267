"""Data-parallel unlearning (spec 3.2): collectives, checkpoints, the per-worker loop, Ray Train."""
