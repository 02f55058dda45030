# Stage 0: simulator rollouts (or the user's videos / LeRobot dataset) into shard directories.


rule rollouts:
    output:
        directory(f"{R}/raw/{{split}}"),
    params:
        cfg=lambda wc: EXP.config_param(f"rollouts_{wc.split}"),
        code=EXP.code_param("rollouts_pretrain"),
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


rule shards_pairs:
    input:
        pairs_inputs,
    output:
        directory(f"{R}/shards/pairs"),
    params:
        cfg=EXP.config_param("shards_pairs"),
        code=EXP.code_param("shards_pairs"),
    log:
        f"{LOGS}/shards_pairs.log",
    benchmark:
        f"{LOGS}/bench/shards_pairs.tsv"
    threads: 2
    resources:
        mem_mb=grow(4000),
        runtime=grow(120),
    shell:
        "lapa shards pairs --input {input:q} --out {output} {LAPA_ARGS} > {log} 2>&1"


rule shards_demos:
    input:
        demos_inputs,
    output:
        directory(f"{R}/shards/demos"),
    params:
        cfg=EXP.config_param("shards_demos"),
        code=EXP.code_param("shards_demos"),
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
