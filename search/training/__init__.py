"""Training: the data sets, the seeded proxy training that scores an architecture, and what
proxy and full-size training share (RNG state, mixed-precision steps, atomic checkpoints)."""
