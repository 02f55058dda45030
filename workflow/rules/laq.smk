# Stage 1: the latent action quantizer, and labelling frame pairs with its codes (or with binned
# true actions, for the action-pretrained comparison arm).


rule train_laq:
    input:
        rules.shards_pairs.output,
    output:
        ckpt=f"{R}/laq/laq.ckpt",
        metrics=f"{R}/laq/laq.metrics.json",
        recon=report(
            f"{R}/laq/laq.recon.png",
            caption="../report/laq_recon.rst",
            category="1. Latent actions",
            labels={"figure": "LAQ reconstructions"},
        ),
        logs=directory(f"{R}/laq/laq.logs"),
    params:
        **contract(
            config=["seed", "laq", "data.loader"],
            leave_out=[
                "laq.label_batch_size",
                "laq.label_workers",
                "laq.training.num_workers",
                *RUN_ONLY("laq"),
            ],
            code=["lapa.commands.laq:run_train", "lapa.laq"],
            work="laq",
        ),
    log:
        f"{LOGS}/train_laq.log",
    benchmark:
        f"{LOGS}/bench/train_laq.tsv"
    threads: MODEL_THREADS
    resources:
        mem_mb=grow(8000),
        runtime=grow(240),
        launcher="",
    shell:
        "{resources.launcher} lapa train-laq --shards {input} --out {output.ckpt} --workdir {params.workdir}"
        " {LAPA_ARGS} > {log} 2>&1; " + COPY_CSV_LOGS


# What labelling reads besides its inputs: how many bins the action probe uses, bad-sample
# handling and the shard layout it writes (its splits are those of the pair shards it reads).
LABEL_CONFIG = ["laq.training.action_bins", "data.loader.on_error", "data.sharding"]


rule label_latent:
    input:
        ckpt=rules.train_laq.output.ckpt,
        shards=rules.shards_pairs.output[0],
    output:
        directory(f"{R}/latent"),
    params:
        **contract(config=LABEL_CONFIG, leave_out=[PAIRS_SPLIT], code=["lapa.commands.laq:run_label", "lapa.laq"]),
    log:
        f"{LOGS}/label_latent.log",
    benchmark:
        f"{LOGS}/bench/label_latent.tsv"
    threads: MODEL_THREADS
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
        stats=rules.action_stats.output[0],
        shards=rules.shards_pairs.output[0],
    output:
        directory(f"{R}/action_labels"),
    params:
        **contract(config=LABEL_CONFIG, leave_out=[PAIRS_SPLIT], code=["lapa.commands.laq:run_label", "lapa.laq"]),
    log:
        f"{LOGS}/label_actions.log",
    benchmark:
        f"{LOGS}/bench/label_actions.tsv"
    threads: MODEL_THREADS
    resources:
        mem_mb=grow(4000),
        runtime=grow(60),
        launcher="",
    shell:
        "{resources.launcher} lapa label --targets actions --action-stats {input.stats} --shards {input.shards}"
        " --out {output} {LAPA_ARGS} > {log} 2>&1"
