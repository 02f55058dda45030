# Stage 1: the latent action quantizer, and labelling frame pairs with its codes.


rule train_laq:
    input:
        f"{R}/shards/pairs",
    output:
        ckpt=f"{R}/laq/laq.ckpt",
        metrics=f"{R}/laq/laq.metrics.json",
        recon=report(
            f"{R}/laq/laq.recon.png",
            caption="../report/laq_recon.rst",
            category="1. Latent actions",
            labels={"figure": "LAQ reconstructions"},
        ),
    params:
        cfg=EXP.config_param("train_laq"),
        code=EXP.code_param("train_laq"),
        workdir=workdir_for("laq", "train_laq"),
    log:
        f"{LOGS}/train_laq.log",
    benchmark:
        f"{LOGS}/bench/train_laq.tsv"
    threads: 2
    resources:
        mem_mb=grow(8000),
        runtime=grow(240),
        launcher="",
    shell:
        "{resources.launcher} lapa train-laq --shards {input} --out {output.ckpt} --workdir {params.workdir}"
        " {LAPA_ARGS} > {log} 2>&1"


rule label_latent:
    input:
        ckpt=f"{R}/laq/laq.ckpt",
        shards=f"{R}/shards/pairs",
    output:
        directory(f"{R}/latent"),
    params:
        cfg=EXP.config_param("label_latent"),
        code=EXP.code_param("label_latent"),
    log:
        f"{LOGS}/label_latent.log",
    benchmark:
        f"{LOGS}/bench/label_latent.tsv"
    threads: 2
    resources:
        mem_mb=grow(8000),
        runtime=grow(60),
        launcher="",
    shell:
        "{resources.launcher} lapa label --checkpoint {input.ckpt} --shards {input.shards} --out {output}"
        " {LAPA_ARGS} > {log} 2>&1"


rule label_actions:
    """The action-pretrained comparison arm: true actions, binned, in place of latent codes."""
    input:
        stats=f"{R}/action_stats.json",
        shards=f"{R}/shards/pairs",
    output:
        directory(f"{R}/action_labels"),
    params:
        cfg=EXP.config_param("label_actions"),
        code=EXP.code_param("label_actions"),
    log:
        f"{LOGS}/label_actions.log",
    benchmark:
        f"{LOGS}/bench/label_actions.tsv"
    threads: 2
    resources:
        mem_mb=grow(4000),
        runtime=grow(60),
        launcher="",
    shell:
        "{resources.launcher} lapa label --targets actions --action-stats {input.stats} --shards {input.shards}"
        " --out {output} {LAPA_ARGS} > {log} 2>&1"
