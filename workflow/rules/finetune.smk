# Stage 3: finetuning to binned robot actions (the deployable policy). The action statistics it
# reads come from data.smk.


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
        policy=directory(f"{R}/policy/{{arm}}"),
        logs=directory(f"{R}/policy/{{arm}}.logs"),
    params:
        **contract(
            config=["seed", "finetune", "data.loader"],
            leave_out=RUN_ONLY("finetune"),
            code=["lapa.commands.finetune:run_finetune", "lapa.finetune"],
            work="finetune/{arm}",
        ),
        init=finetune_init,
    log:
        f"{LOGS}/finetune_{{arm}}.log",
    benchmark:
        f"{LOGS}/bench/finetune_{{arm}}.tsv"
    threads: 2
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
        " --shards {input.shards} --out {output.policy} --workdir {params.workdir} {LAPA_ARGS} {params.init}"
        " > {log} 2>&1; " + COPY_CSV_LOGS
