# Stage 0: simulator rollouts (or the user's videos / LeRobot dataset) into shard directories, and
# the action statistics of the demonstrations.

# Simulator settings that decide no rollout of a split: how many processes render, evaluation
# settings and the other split's episodes, seeds and noise.
SIM_NOT_ROLLOUTS = ["sim.workers", "sim.save_videos", "sim.eval_episodes_per_task", "sim.eval_seed"]
SIM_SPLIT_KEYS = {
    "pretrain": ["sim.pretrain_episodes_per_task", "sim.pretrain_seed", "sim.pretrain_action_noise"],
    "demos": ["sim.demo_episodes_per_task", "sim.demo_seed", "sim.demo_action_noise"],
}


def other_splits(wildcards):
    return SIM_NOT_ROLLOUTS + [k for s, keys in SIM_SPLIT_KEYS.items() if s != wildcards.split for k in keys]


rule rollouts:
    output:
        directory(f"{R}/raw/{{split}}"),
    params:
        **contract(
            config=["seed", "sim"],
            leave_out=other_splits,
            code=["lapa.commands.sim:_run_rollouts", "lapa.sim"],
        ),
    log:
        f"{LOGS}/rollouts_{{split}}.log",
    benchmark:
        f"{LOGS}/bench/rollouts_{{split}}.tsv"
    threads: 2
    resources:
        mem_mb=grow(4000),
        runtime=grow(60),
    shell:
        "lapa rollouts --split {wildcards.split} --out {output} {LAPA_ARGS} > {log} 2>&1"


def pairs_inputs(wildcards=None):
    source = CFG.data.source
    if source == "videos":
        return EXP.video_inputs()
    if source == "lerobot":
        return [EXP.lerobot_root()]
    return expand(rules.rollouts.output[0], split="pretrain")


def demos_inputs(wildcards=None):
    if CFG.data.source == "lerobot":
        return [EXP.lerobot_root()]
    return expand(rules.rollouts.output[0], split="demos")


# The split by task (data.sharding.train_episodes_per_task: exactly N training demonstrations per
# task) is the demonstrations'; frame pairs always split by episode hash at val_fraction, so that
# pretraining videos are not held out N-by-task as well.
PAIRS_SPLIT = "data.sharding.train_episodes_per_task"


rule shards_pairs:
    input:
        pairs_inputs,
    output:
        directory(f"{R}/shards/pairs"),
    params:
        **contract(
            config=["data.source", "data.videos", "data.lerobot_root", "data.sharding"],
            leave_out=[PAIRS_SPLIT],
            code=["lapa.commands.data:run_shards", "lapa.data"],
        ),
    log:
        f"{LOGS}/shards_pairs.log",
    benchmark:
        f"{LOGS}/bench/shards_pairs.tsv"
    threads: 2
    resources:
        mem_mb=grow(4000),
        runtime=grow(120),
    shell:
        "lapa shards pairs --input {input:q} --out {output} {LAPA_ARGS} " + PAIRS_SPLIT + "=null > {log} 2>&1"


rule shards_demos:
    input:
        demos_inputs,
    output:
        directory(f"{R}/shards/demos"),
    params:
        **contract(
            config=["data.source", "data.lerobot_root", "data.sharding"],
            code=["lapa.commands.data:run_shards", "lapa.data"],
        ),
    log:
        f"{LOGS}/shards_demos.log",
    benchmark:
        f"{LOGS}/bench/shards_demos.tsv"
    threads: 2
    resources:
        mem_mb=grow(4000),
        runtime=grow(60),
    shell:
        "lapa shards demos --input {input:q} --out {output} {LAPA_ARGS} > {log} 2>&1"


rule action_stats:
    """Only the statistics code is fingerprinted: editing finetuning must not rebin the actions
    (and so relabel and retrain the action-pretrained arm)."""
    input:
        rules.shards_demos.output,
    output:
        f"{R}/action_stats.json",
    params:
        **contract(
            config=["finetune.stats", "data.loader.on_error"],
            code=["lapa.commands.stats", "lapa.data.action_codec", "lapa.data.shard_reader"],
        ),
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
