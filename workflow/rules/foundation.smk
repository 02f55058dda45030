# Stage 2: local backbones and tokenizer, then the vision-language-action foundation model.

FOUNDATION_LABELS = {"lapa": f"{R}/latent", "action_pretrained": f"{R}/action_labels"}


rule make_backbones:
    input:
        pairs=f"{R}/shards/pairs",
        demos=f"{R}/shards/demos",
    output:
        directory(f"{R}/backbones"),
    params:
        cfg=EXP.config_param("make_backbones"),
        code=EXP.code_param("make_backbones"),
    log:
        f"{LOGS}/make_backbones.log",
    benchmark:
        f"{LOGS}/bench/make_backbones.tsv"
    threads: 2
    resources:
        mem_mb=grow(16000),
        runtime=grow(60),
        launcher="",
    shell:
        "{resources.launcher} lapa make-backbones --instructions {input.pairs} {input.demos} --out {output}"
        " {LAPA_ARGS} > {log} 2>&1"


rule train_foundation:
    """One process per device. Under Slurm, the `mpi` resource (a profile sets it to `srun ...`)
    launches them as tasks of one job, possibly over several nodes; Fabric reads ranks from Slurm."""
    input:
        backbones=f"{R}/backbones",
        labels=lambda wc: FOUNDATION_LABELS[wc.arm],
    output:
        directory(f"{R}/foundation/{{arm}}"),
    wildcard_constraints:
        arm="lapa|action_pretrained",
    params:
        cfg=EXP.config_param("train_foundation"),
        code=EXP.code_param("train_foundation"),
        workdir=lambda wc: workdir_for("foundation", "train_foundation", wc.arm),
    log:
        f"{LOGS}/train_foundation_{{arm}}.log",
    benchmark:
        f"{LOGS}/bench/train_foundation_{{arm}}.tsv"
    threads: 2
    resources:
        mem_mb=grow(16000),
        runtime=grow(720),
        nodes=CFG.foundation.training.num_nodes,
        tasks_per_node=CFG.foundation.training.devices,
        mpi="",
        launcher="",
    shell:
        "launch='{resources.launcher}'; "
        "if [ -n '{resources.mpi}' ]; then "
        "launch='{resources.mpi} --nodes={resources.nodes} --ntasks-per-node={resources.tasks_per_node}'; fi; "
        "$launch lapa train-foundation --backbones {input.backbones} --shards {input.labels} --out {output}"
        " --workdir {params.workdir} {LAPA_ARGS} > {log} 2>&1"
