"""Stage 1: the latent action quantizer (a VQ-VAE over frame pairs) and latent labelling."""
