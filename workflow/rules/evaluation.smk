# Evaluation of every arm's policy, the results table, training curves for the report.


rule eval_offline:
    input:
        policy=f"{R}/policy/{{arm}}",
        shards=f"{R}/shards/demos",
    output:
        report(
            directory(f"{R}/eval/{{arm}}/offline"),
            patterns=["{name}.png"],
            caption="../report/eval_offline.rst",
            category="3. Evaluation",
            subcategory="{arm}",
            labels={"arm": "{arm}", "figure": "offline: {name}"},
        ),
    params:
        cfg=EXP.config_param("eval_offline"),
        code=EXP.code_param("eval_offline"),
    log:
        f"{LOGS}/eval_offline_{{arm}}.log",
    benchmark:
        f"{LOGS}/bench/eval_offline_{{arm}}.tsv"
    threads: 1
    resources:
        mem_mb=grow(8000),
        runtime=grow(60),
        launcher="",
    shell:
        "{resources.launcher} lapa eval-offline --policy {input.policy} --shards {input.shards} --out {output}"
        " {LAPA_ARGS} > {log} 2>&1"


rule eval_sim:
    input:
        f"{R}/policy/{{arm}}",
    output:
        report(
            directory(f"{R}/eval/{{arm}}/sim"),
            patterns=["{name}.png"],
            caption="../report/eval_sim.rst",
            category="3. Evaluation",
            subcategory="{arm}",
            labels={"arm": "{arm}", "figure": "closed loop: {name}"},
        ),
    params:
        cfg=EXP.config_param("eval_sim"),
        code=EXP.code_param("eval_sim"),
    log:
        f"{LOGS}/eval_sim_{{arm}}.log",
    benchmark:
        f"{LOGS}/bench/eval_sim_{{arm}}.tsv"
    threads: 2
    resources:
        mem_mb=grow(8000),
        runtime=grow(120),
        launcher="",
    shell:
        "{resources.launcher} lapa eval-sim --policy {input} --out {output} {LAPA_ARGS} > {log} 2>&1"


def laq_diagnostics():
    """The LAQ's metrics and label report, when an arm pretrains on latent actions."""
    return {"laq": f"{R}/laq/laq.ckpt", "labels": f"{R}/latent"} if "lapa" in ARMS else {}


def laq_diagnostics_args(wildcards, input):
    if "laq" not in input.keys():
        return ""
    return f"--laq-metrics {R}/laq/laq.metrics.json --label-report {input.labels}/label_report.json"


rule results:
    input:
        evals=eval_targets(),
        **laq_diagnostics(),
    output:
        report(
            directory(f"{R}/summary"),
            patterns=["{name}.csv"],
            caption="../report/results.rst",
            category="4. Results",
            labels={"table": "{name}"},
        ),
    params:
        cfg=EXP.config_param("results"),
        code=EXP.code_param("results"),
        laq_args=laq_diagnostics_args,
    log:
        f"{LOGS}/results.log",
    benchmark:
        f"{LOGS}/bench/results.tsv"
    threads: 1
    resources:
        mem_mb=grow(2000),
        runtime=grow(10),
    shell:
        "lapa results --inputs {input.evals} {params.laq_args} --out {output} {LAPA_ARGS} > {log} 2>&1"


def curve_logs():
    """The training folders holding each run's CSV logs (scratch folders, read after training)."""
    out = ["laq=" + workdir_for("laq", "train_laq")]
    out += [f"foundation_{arm}=" + workdir_for("foundation", "train_foundation", arm) for arm in ARMS if arm != "scratch"]
    out += [f"finetune_{arm}=" + workdir_for("finetune", "finetune", arm) for arm in ARMS]
    return out


rule plot_curves:
    input:
        f"{R}/laq/laq.ckpt",
        [f"{R}/foundation/{arm}" for arm in ARMS if arm != "scratch"],
        [f"{R}/policy/{arm}" for arm in ARMS],
    output:
        report(
            directory(f"{R}/curves"),
            patterns=["{name}.png"],
            caption="../report/curves.rst",
            category="2. Training curves",
            labels={"figure": "{name}"},
        ),
    params:
        cfg=EXP.config_param("plot_curves"),
        code=EXP.code_param("plot_curves"),
        logs=curve_logs(),
    log:
        f"{LOGS}/plot_curves.log",
    benchmark:
        f"{LOGS}/bench/plot_curves.tsv"
    threads: 1
    resources:
        mem_mb=grow(2000),
        runtime=grow(10),
    shell:
        "lapa plot-curves --logs {params.logs} --out {output} > {log} 2>&1"
