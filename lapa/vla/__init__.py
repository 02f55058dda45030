"""The vision-language-action model library, apart from any training loop.

Modules: ``vision`` (SigLIP + DINOv2 towers from timm), ``projector``, ``model`` (VLAModel: Llama
over ``[BOS][IMG][TEXT][ACT x N]``), ``heads`` (latent-action and binned-action heads),
``processor`` (VLAProcessor, shared by training and the policy), ``tokenizer``, ``backbones``
(the local backbones directory), ``checkpoint`` (the consolidated checkpoint format) and
``parallelize`` (the FSDP2 plan and the Fabric run plan beside the model, as torchtitan keeps
``parallelize`` beside ``model``). Heavy imports live in those modules.
"""
