"""Stage 2: the vision-language-action model pretrained on latent actions."""
