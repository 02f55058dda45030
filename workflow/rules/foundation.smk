# Stage 2: local backbones and tokenizer, then the vision-language-action foundation model.

FOUNDATION_LABELS = {"lapa": rules.label_latent.output[0], "action_pretrained": rules.label_actions.output[0]}


rule make_backbones:
    input:
        pairs=rules.shards_pairs.output[0],
        demos=rules.shards_demos.output[0],
    output:
        directory(f"{R}/backbones"),
    params:
        **contract(
            config=["seed", "foundation.vision", "foundation.llm", "foundation.max_text_tokens"],
            code=["lapa.commands.foundation:_run_make_backbones", "lapa.vla.backbones"],
        ),
    log:
        f"{LOGS}/make_backbones.log",
    benchmark:
        f"{LOGS}/bench/make_backbones.tsv"
    threads: MODEL_THREADS
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
        backbones=rules.make_backbones.output[0],
        labels=lambda wc: FOUNDATION_LABELS[wc.arm],
    output:
        model=directory(f"{R}/foundation/{{arm}}"),
        logs=directory(f"{R}/foundation/{{arm}}.logs"),
    wildcard_constraints:
        arm="lapa|action_pretrained",
    params:
        **contract(
            config=["seed", "foundation", "data.loader"],
            leave_out=RUN_ONLY("foundation"),
            code=["lapa.commands.foundation:_run_train_foundation", "lapa.foundation"],
            work="foundation/{arm}",
        ),
    log:
        f"{LOGS}/train_foundation_{{arm}}.log",
    benchmark:
        f"{LOGS}/bench/train_foundation_{{arm}}.tsv"
    threads: MODEL_THREADS
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
        "$launch lapa train-foundation --backbones {input.backbones} --shards {input.labels} --out {output.model}"
        " --workdir {params.workdir} {LAPA_ARGS} > {log} 2>&1; " + COPY_CSV_LOGS
