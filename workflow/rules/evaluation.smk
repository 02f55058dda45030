# Evaluation of every arm's policy for every finetuning seed, the results table over all of them,
# training curves for the report.


rule eval_offline:
    input:
        policy=rules.finetune.output.policy,
        shards=rules.shards_demos.output[0],
    output:
        report(
            directory(f"{R}/eval/{{arm}}/seed{{seed}}/offline"),
            patterns=["{name}.png"],
            caption="../report/eval_offline.rst",
            category="3. Evaluation",
            subcategory="{arm}",
            labels={"arm": "{arm}", "seed": "{seed}", "figure": "offline: {name}"},
        ),
    params:
        **contract(
            config=["evaluation", "data.loader"],
            code=["lapa.commands.evaluation:run_eval_offline", "lapa.evaluation.offline"],
        ),
    log:
        f"{LOGS}/eval_offline_{{arm}}_seed{{seed}}.log",
    benchmark:
        f"{LOGS}/bench/eval_offline_{{arm}}_seed{{seed}}.tsv"
    threads: MODEL_THREADS
    resources:
        mem_mb=grow(8000),
        runtime=grow(60),
        launcher="",
    shell:
        "{resources.launcher} lapa eval-offline --policy {input.policy} --shards {input.shards} --out {output}"
        " {LAPA_ARGS} > {log} 2>&1"


rule eval_sim:
    input:
        rules.finetune.output.policy,
    output:
        report(
            directory(f"{R}/eval/{{arm}}/seed{{seed}}/sim"),
            patterns=["{name}.png"],
            caption="../report/eval_sim.rst",
            category="3. Evaluation",
            subcategory="{arm}",
            labels={"arm": "{arm}", "seed": "{seed}", "figure": "closed loop: {name}"},
        ),
    params:
        **contract(
            config=["evaluation", "sim"],
            leave_out=["sim.workers", *SIM_SPLIT_KEYS["pretrain"], *SIM_SPLIT_KEYS["demos"]],
            code=["lapa.commands.sim:_run_eval_sim", "lapa.evaluation.closed_loop", "lapa.sim"],
        ),
    log:
        f"{LOGS}/eval_sim_{{arm}}_seed{{seed}}.log",
    benchmark:
        f"{LOGS}/bench/eval_sim_{{arm}}_seed{{seed}}.tsv"
    threads: MODEL_THREADS
    resources:
        mem_mb=grow(8000),
        runtime=grow(120),
        launcher="",
    shell:
        "{resources.launcher} lapa eval-sim --policy {input} --out {output} {LAPA_ARGS} > {log} 2>&1"


def eval_targets():
    """Every arm x finetuning seed evaluation: offline, and closed loop with workflow.eval_sim."""
    out = expand_runs(rules.eval_offline.output[0])
    if CFG.workflow.eval_sim:
        out += expand_runs(rules.eval_sim.output[0])
    return out


def foundation_args(wildcards, input):
    """`--foundation DIR ...` for the arms with a foundation model (their top-1 beside chance)."""
    return f"--foundation {' '.join(input.foundations)}" if input.foundations else ""


def laq_diagnostics():
    """The LAQ's metrics and label report, when an arm pretrains on latent actions."""
    if "lapa" not in ARMS:
        return {}
    return {"laq_metrics": rules.train_laq.output.metrics, "labels": rules.label_latent.output[0]}


def laq_diagnostics_args(wildcards, input):
    if "laq_metrics" not in input.keys():
        return ""
    return f"--laq-metrics {input.laq_metrics} --label-report {input.labels}/label_report.json"


rule results:
    """One table over every arm and finetuning seed: `lapa results` reads arm and seed from the
    paths (eval/<arm>/seed<N>/...) and refuses arms evaluated differently."""
    input:
        evals=eval_targets(),
        foundations=expand(rules.train_foundation.output.model, arm=pretrained_arms()),
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
        **contract(config=["name"], code=["lapa.commands.results:_run", "lapa.evaluation.results"]),
        laq_args=laq_diagnostics_args,
        foundation_args=foundation_args,
    log:
        f"{LOGS}/results.log",
    benchmark:
        f"{LOGS}/bench/results.tsv"
    threads: 1
    resources:
        mem_mb=grow(2000),
        runtime=grow(10),
    shell:
        "lapa results --inputs {input.evals} {params.laq_args} {params.foundation_args} --out {output}"
        " {LAPA_ARGS} > {log} 2>&1"


def curve_logs():
    """Each training run's CSV logs, declared outputs of the training rules, by figure name.

    Finetuning is drawn for the first finetuning seed of each arm, so adding seeds to
    workflow.finetune_seeds redraws nothing."""
    out = {"laq": rules.train_laq.output.logs}
    out |= {f"foundation_{arm}": expand(rules.train_foundation.output.logs, arm=arm)[0] for arm in pretrained_arms()}
    first = SEEDS[0]
    out |= {f"finetune_{arm}": expand(rules.finetune.output.logs, arm=arm, seed=first)[0] for arm in ARMS}
    return out


rule plot_curves:
    input:
        **curve_logs(),
    output:
        report(
            directory(f"{R}/curves"),
            patterns=["{name}.png"],
            caption="../report/curves.rst",
            category="2. Training curves",
            labels={"figure": "{name}"},
        ),
    params:
        **contract(config=[], code=["lapa.commands.workflow:_run_plot_curves", "lapa.evaluation.curves"]),
        logs=lambda wc, input: " ".join(f"{name}={path}" for name, path in input.items()),
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
