# Shared helpers: a rule's contract (the config and code that decide its output), resources that
# grow on a retry, paths per arm and finetuning seed.

import hashlib

from lapa_workflow.shell import COPY_CSV_LOGS  # training rules append it to their shell


def contract(config, code, leave_out=(), work=None):
    """The params every rule carries, from the contract written in the rule itself.

    config: dotted config keys (whole sections or single keys) whose resolved values decide the
        output, or a function of the wildcards returning them (rollouts: one split's keys).
    leave_out: keys inside those sections that do not change the output (worker counts; the
        other split's settings), a list or a function of the wildcards; `data.sharding.workers`
        and `data.loader.num_workers` are always left out.
    code: what the rule runs: its command, as `lapa.commands.<module>:<function>` (the function
        `lapa <subcommand>` calls), and the stage packages or modules it uses; the files they
        consist of and every `lapa` module they import are fingerprinted (codehash.py).
    work: for training rules, the scratch folder under results/<experiment>/work/ (checkpoints,
        CSV logs), e.g. "finetune/{arm}"; its last part is a key of the config and code params,
        so a changed setting starts a fresh run instead of resuming a mismatched one.

    Returns {"cfg": ..., "code": ...} (+ "workdir") for `params: **contract(...)`. A changed value
    or fingerprint reruns the rule (`reason: Params have changed`) and what follows it.
    """
    fingerprint = EXP.code_param(list(code))
    if callable(config) or callable(leave_out):
        keys = config if callable(config) else (lambda wc: config)
        drop = leave_out if callable(leave_out) else (lambda wc: leave_out)
        cfg = lambda wc: EXP.config_param(list(keys(wc)), list(drop(wc)))
        if work:
            raise ValueError(f"contract of {work}: a work folder needs a fixed config key list")
        return {"cfg": cfg, "code": fingerprint}
    cfg = EXP.config_param(list(config), list(leave_out))
    out = {"cfg": cfg, "code": fingerprint}
    if work:
        key = hashlib.sha256((cfg + fingerprint).encode()).hexdigest()[:10]
        out["workdir"] = f"{R}/work/{work}/{key}"  # {arm} is filled in per job
    return out


# Cores of a job that runs a model (training, labelling, evaluation): one. Such a job computes with
# one torch thread (OMP_NUM_THREADS follows a rule's threads) beside its data-loader worker or
# renderer; a second intra-op thread only contends with them, while the DAG has independent jobs
# (the two foundation models, every arm x finetuning seed) to run side by side on the other cores.
# A profile may give a rule more (`set-threads`); a Slurm profile sets its CPUs (cpus_per_task).
MODEL_THREADS = 1

# Training keys that change how a run goes (checkpoints kept, threads, leaving early), not its weights.
RUN_ONLY = EXP.run_only_keys


def grow(base, factor=1.5):
    """A resource that is `base` on the first attempt and grows by `factor` on every retry."""
    return lambda wildcards, attempt: int(base * factor ** (attempt - 1))


def expand_runs(pattern, arms=None):
    """One path per arm and finetuning seed from a rule output pattern holding {arm} and {seed}."""
    return expand(pattern, arm=ARMS if arms is None else arms, seed=SEEDS)


def pretrained_arms():
    """The arms with a foundation model (all but scratch)."""
    return [arm for arm in ARMS if arm != "scratch"]
