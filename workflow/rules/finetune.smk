# Stage 3: finetuning to binned robot actions (the deployable policy), once per arm and finetuning
# seed (workflow.finetune_seeds, the same for every arm). The action statistics it reads come from
# data.smk.


def finetune_inputs(wildcards):
    out = {
        "backbones": rules.make_backbones.output[0],
        "stats": rules.action_stats.output[0],
        "shards": rules.shards_demos.output[0],
    }
    if wildcards.arm != "scratch":
        out["foundation"] = expand(rules.train_foundation.output.model, arm=wildcards.arm)[0]
    return out


def finetune_init(wildcards, input):
    """The scratch arm starts from the backbones alone; the others from their foundation model."""
    if wildcards.arm == "scratch":
        return "finetune.init=scratch"
    return f"--foundation {input.foundation}"


rule finetune:
    """One process per device, as train_foundation: under Slurm the `mpi` resource launches them as
    tasks of one job (FSDP2 or DDP through Fabric, which reads ranks from Slurm)."""
    input:
        unpack(finetune_inputs),
    output:
        policy=directory(f"{R}/policy/{{arm}}/seed{{seed}}"),
        logs=directory(f"{R}/policy/{{arm}}/seed{{seed}}.logs"),
    params:
        **contract(
            # finetune.training.seed is the {seed} wildcard, passed on the command line
            config=["seed", "finetune", "data.loader"],
            leave_out=[*RUN_ONLY("finetune"), "finetune.training.seed"],
            code=["lapa.commands.finetune:run_finetune", "lapa.finetune"],
            work="finetune/{arm}/seed{seed}",
        ),
        init=finetune_init,
    log:
        f"{LOGS}/finetune_{{arm}}_seed{{seed}}.log",
    benchmark:
        f"{LOGS}/bench/finetune_{{arm}}_seed{{seed}}.tsv"
    threads: MODEL_THREADS
    resources:
        mem_mb=grow(16000),
        runtime=grow(240),
        nodes=CFG.finetune.training.num_nodes,
        tasks_per_node=CFG.finetune.training.devices,
        mpi="",
        launcher="",
    shell:
        "launch='{resources.launcher}'; "
        "if [ -n '{resources.mpi}' ]; then "
        "launch='{resources.mpi} --nodes={resources.nodes} --ntasks-per-node={resources.tasks_per_node}'; fi; "
        "$launch lapa finetune --backbones {input.backbones} --action-stats {input.stats}"
        " --shards {input.shards} --out {output.policy} --workdir {params.workdir} {LAPA_ARGS}"
        " finetune.training.seed={wildcards.seed} {params.init}"
        " > {log} 2>&1; " + COPY_CSV_LOGS
