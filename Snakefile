"""LAPA as a DAG of cached artifacts under results/<experiment>/.

    snakemake -n                                   # what must (re)build for the default experiment
    snakemake --config experiment=tiny             # another experiment from configs/experiment/
    snakemake --config overrides="laq.quantizer.vocab_size=16"   # key=value overrides
    snakemake --config overrides="workflow.finetune_seeds=[0,1,2]"  # every arm for each finetuning seed
    snakemake --profile profiles/lrz               # the LRZ H100 nodes through Slurm

Each rule runs one `lapa` subcommand and states its own contract in workflow/rules/*.smk:
`params: **contract(config=[...], code=[...])` names the config keys and the lapa code (its
`lapa.commands` function and stage packages) that decide its output. The params carry those
resolved values and a fingerprint of that code, so a changed value or an edited stage reruns
that stage and what follows it, and nothing upstream. Rules chain through `rules.X.output`.
"""

import os
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "lib"))
from lapa_workflow.experiment import Experiment  # noqa: E402

EXP = Experiment.from_snakemake_config(config, workflow.basedir)
CFG = EXP.cfg
R = f"results/{EXP.name}"
LOGS = f"logs/{EXP.name}"
ARMS = list(CFG.workflow.arms)
SEEDS = EXP.finetune_seeds  # every arm is finetuned and evaluated once per seed

# Referenced as {LAPA_ARGS} in shell templates (not baked into them), so that the recorded rule
# code stays the same whatever the overrides; their effect reaches the params instead.
LAPA_ARGS = EXP.cli.replace("{", "{{").replace("}", "}}")

shell.prefix("set -euo pipefail; " + EXP.env_prefix)

# The `lapa` beside this Snakemake's interpreter (an unactivated venv) comes first on PATH.
if (Path(sys.executable).parent / "lapa").exists():
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


wildcard_constraints:
    arm="lapa|scratch|action_pretrained",
    split="pretrain|demos",
    seed=r"\d+",


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/laq.smk"
include: "workflow/rules/foundation.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluation.smk"


rule all:
    default_target: True
    input:
        eval_targets(),
        rules.results.output,
        rules.plot_curves.output,
        rules.train_laq.output.recon,
