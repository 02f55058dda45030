# Stage 3: action statistics and finetuning to binned robot actions (the deployable policy).


rule action_stats:
    input:
        f"{R}/shards/demos",
    output:
        f"{R}/action_stats.json",
    params:
        cfg=EXP.config_param("action_stats"),
        code=EXP.code_param("action_stats"),
    log:
        f"{LOGS}/action_stats.log",
    benchmark:
        f"{LOGS}/bench/action_stats.tsv"
    threads: 1
    resources:
        mem_mb=grow(4000),
        runtime=grow(30),
        launcher="",
    shell:
        "{resources.launcher} lapa action-stats --shards {input} --out {output} {LAPA_ARGS} > {log} 2>&1"


def finetune_inputs(wildcards):
    out = {"backbones": f"{R}/backbones", "stats": f"{R}/action_stats.json", "shards": f"{R}/shards/demos"}
    if wildcards.arm != "scratch":
        out["foundation"] = f"{R}/foundation/{wildcards.arm}"
    return out


def finetune_init(wildcards, input):
    """The scratch arm starts from the backbones alone; the others from their foundation model."""
    if wildcards.arm == "scratch":
        return "finetune.init=scratch"
    return f"--foundation {input.foundation}"


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        directory(f"{R}/policy/{{arm}}"),
    params:
        cfg=EXP.config_param("finetune"),
        code=EXP.code_param("finetune"),
        init=finetune_init,
        workdir=lambda wc: workdir_for("finetune", "finetune", wc.arm),
    log:
        f"{LOGS}/finetune_{{arm}}.log",
    benchmark:
        f"{LOGS}/bench/finetune_{{arm}}.tsv"
    threads: 2
    resources:
        mem_mb=grow(16000),
        runtime=grow(240),
        launcher="",
    shell:
        "{resources.launcher} lapa finetune --backbones {input.backbones} --action-stats {input.stats}"
        " --shards {input.shards} --out {output} --workdir {params.workdir} {LAPA_ARGS} {params.init}"
        " > {log} 2>&1"
