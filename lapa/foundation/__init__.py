"""Stage 2: the vision-language-action model pretrained on latent actions.

Modules: ``model`` (VLAModel), ``heads`` (LatentActionHead), ``processing`` (VLAProcessor, shared
with the policy), ``backbones`` (the local backbones directory), ``checkpoint`` (save_foundation /
load_foundation), ``train`` (the Fabric loop), ``distributed`` (single / DDP / FSDP2).
Heavy imports live in those modules so ``import lapa.foundation`` stays cheap.
"""
