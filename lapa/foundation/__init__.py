"""Stage 2: pretraining the VLA (``lapa.vla``) on latent actions with a Fabric loop (``train``)."""
