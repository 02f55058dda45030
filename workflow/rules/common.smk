# Shared helpers: resources that grow on a retry, work folders, and what `rule all` builds.

import hashlib


def grow(base, factor=1.5):
    """A resource that is `base` on the first attempt and grows by `factor` on every retry."""
    return lambda wildcards, attempt: int(base * factor ** (attempt - 1))


def workdir_for(stage, rule, arm=None):
    """Scratch folder (checkpoints, CSV logs) for resuming; keyed by params so a change starts fresh."""
    key = hashlib.sha256((EXP.config_param(rule) + EXP.code_param(rule) + (arm or "")).encode()).hexdigest()[:10]
    parts = [R, "work", stage] + ([arm] if arm else []) + [key]
    return "/".join(parts)


def pairs_inputs(wildcards=None):
    source = CFG.data.source
    if source == "videos":
        return EXP.video_inputs()
    if source == "lerobot":
        return [EXP.lerobot_root()]
    return [f"{R}/raw/pretrain"]


def demos_inputs(wildcards=None):
    if CFG.data.source == "lerobot":
        return [EXP.lerobot_root()]
    return [f"{R}/raw/demos"]


def eval_targets():
    out = [f"{R}/eval/{arm}/offline" for arm in ARMS]
    if CFG.workflow.eval_sim:
        out += [f"{R}/eval/{arm}/sim" for arm in ARMS]
    return out


def final_targets():
    return eval_targets() + [f"{R}/summary", f"{R}/curves", f"{R}/laq/laq.recon.png"]
