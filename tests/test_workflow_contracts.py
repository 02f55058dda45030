"""Every rule states its own contract in its `.smk` file, and the contracts say what they mean.

The rules are read as text: each `rule NAME:` block's `params: **contract(..., code=[...])`,
the `lapa` subcommand its shell runs, and where result paths are written.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "lib"))

from lapa_workflow import codehash  # noqa: E402

RULE_FILES = sorted((REPO / "workflow" / "rules").glob("*.smk")) + [REPO / "Snakefile"]
_RULE = re.compile(r"^rule (\w+):\n((?:[ \t]+.*\n|[ \t]*\n)*)", re.M)
_SECTION = re.compile(r"^    (\w+):", re.M)


def rules() -> dict[str, str]:
    out = {}
    for path in RULE_FILES:
        for match in _RULE.finditer(path.read_text()):
            out[match.group(1)] = match.group(2)
    return out


def sections(block: str) -> dict[str, str]:
    marks = list(_SECTION.finditer(block))
    return {
        m.group(1): block[m.end() : marks[i + 1].start() if i + 1 < len(marks) else len(block)]
        for i, m in enumerate(marks)
    }


def contract_call(block: str) -> ast.Call:
    start = block.index("contract(")
    depth = 0
    for end in range(start + len("contract"), len(block)):
        depth += {"(": 1, ")": -1}.get(block[end], 0)
        if depth == 0:
            break
    return ast.parse(block[start : end + 1], mode="eval").body


def code_entries(block: str) -> list[str]:
    call = contract_call(block)
    return ast.literal_eval(next(k.value for k in call.keywords if k.arg == "code"))


def command_function(shell: str) -> str:
    """``module:function`` that ``lapa <subcommand>`` in a rule's shell runs."""
    from lapa.commands import build_parser

    words = re.search(r"\blapa ([a-z-]+)(?: ([a-z]+))?", shell)
    assert words, shell
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[words.group(1)]
    func = sub.get_default("func")
    if func is None:  # `lapa shards pairs|demos`: the kind's own parser
        kinds = next(a for a in sub._actions if getattr(a, "choices", None) and words.group(2) in a.choices)
        func = kinds.choices[words.group(2)].get_default("func")
    return f"{func.__module__}:{func.__name__}"


RULES = {name: block for name, block in rules().items() if name != "all"}
STAGE_RULES = [
    "rollouts", "shards_pairs", "shards_demos", "action_stats", "train_laq", "label_latent", "label_actions",
    "make_backbones", "train_foundation", "finetune", "eval_offline", "eval_sim", "results", "plot_curves",
]  # fmt: skip


def closure_of(rule: str) -> set[str]:
    return {str(p.relative_to(REPO)) for p in codehash.closure(REPO, code_entries(RULES[rule]))}


def test_every_stage_rule_is_found():
    assert sorted(RULES) == sorted(STAGE_RULES)


@pytest.mark.parametrize("rule", STAGE_RULES)
def test_rule_names_the_command_it_runs_in_its_code(rule):
    block = RULES[rule]
    parts = sections(block)
    assert "contract(" in parts["params"], f"rule {rule} carries no contract"
    function = command_function(parts["shell"])
    entries = code_entries(block)
    assert function in entries or function.split(":")[0] in entries, (rule, function, entries)
    assert codehash.closure(REPO, entries)  # every entry exists


def test_action_statistics_do_not_follow_finetuning_code():
    files = closure_of("action_stats")
    assert "lapa/commands/stats.py" in files and "lapa/data/action_codec.py" in files
    assert not [f for f in files if f.startswith(("lapa/finetune/", "lapa/policy/", "lapa/vla/"))], files
    assert "lapa/commands/finetune.py" not in files


def test_rollouts_and_backbones_do_not_follow_other_subcommands_of_their_command_module():
    rollouts = closure_of("rollouts")
    assert "lapa/sim/rollouts.py" in rollouts
    assert not [f for f in rollouts if f.startswith(("lapa/policy/", "lapa/vla/", "lapa/evaluation/"))], (
        rollouts
    )
    backbones = closure_of("make_backbones")
    assert "lapa/vla/backbones.py" in backbones and "lapa/foundation/train.py" not in backbones
    # the function's own helpers are followed: eval-sim loads a policy through _load_policy
    assert "lapa/policy/policy.py" in closure_of("eval_sim")


def test_serving_code_decides_no_artifact():
    for rule in STAGE_RULES:
        files = closure_of(rule)
        assert "lapa/policy/server.py" not in files and "lapa/commands/policy.py" not in files, rule


def test_result_paths_are_typed_once_in_outputs_and_chained_through_rules():
    for name, block in RULES.items():
        for section, text in sections(block).items():
            if section != "output":
                assert "{R}/" not in text, (
                    f"rule {name} re-types a result path in {section}: use rules.X.output"
                )
    for path in RULE_FILES:
        text = path.read_text()
        outside = _RULE.sub("", text)
        lines = [line for line in outside.splitlines() if "{R}/" in line]
        allowed = ['out["workdir"] = f"{R}/work/{work}/{key}"']
        assert all(any(a in line for a in allowed) for line in lines), (path.name, lines)


def test_scoped_entry_follows_the_function_and_its_helpers_only(tmp_path):
    pkg = tmp_path / "lapa"
    for sub in ["", "commands", "a", "b", "c"]:
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "commands" / "tool.py").write_text(
        "import lapa.c\n"
        "def _helper():\n    from lapa.a import x\n"
        "def run_one(args):\n    return _helper()\n"
        "def run_two(args):\n    from lapa.b import y\n"
    )
    for mod in ["a/x", "b/y"]:
        (pkg / f"{mod}.py").write_text("V = 1\n")
    files = {str(p.relative_to(tmp_path)) for p in codehash.closure(tmp_path, ["lapa.commands.tool:run_one"])}
    assert {"lapa/commands/tool.py", "lapa/a/x.py", "lapa/c/__init__.py"} <= files
    assert "lapa/b/y.py" not in files
    before = codehash.fingerprint(tmp_path, ["lapa.commands.tool:run_one"])
    (pkg / "b" / "y.py").write_text("V = 2\n")
    assert codehash.fingerprint(tmp_path, ["lapa.commands.tool:run_one"]) == before
    (pkg / "a" / "x.py").write_text("V = 2\n")
    assert codehash.fingerprint(tmp_path, ["lapa.commands.tool:run_one"]) != before
    with pytest.raises(ValueError, match="defines no top-level 'run_three'"):
        codehash.closure(tmp_path, ["lapa.commands.tool:run_three"])


def test_imports_nested_in_any_statement_are_followed(tmp_path):
    pkg = tmp_path / "lapa"
    names = [f"m{i}" for i in range(9)]
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in [*names, "unused"]:
        (pkg / f"{name}.py").write_text("V = 1\n")
    (pkg / "tool.py").write_text(
        "try:\n    import lapa.m0\nexcept ImportError:\n    from lapa import m1\nelse:\n    pass\n"
        "finally:\n    from . import m2\n"
        "with open(__file__):\n    if True:\n        pass\n    else:\n        from .m3 import V\n"
        "class Tool:\n    @staticmethod\n    def go():\n        def inner():\n            import lapa.m4\n"
        "for _ in ():\n    pass\nelse:\n    import lapa.m5\n"
        "while False:\n    import lapa.m6\n"
        "match 1:\n    case 1:\n        import lapa.m7\n"
        "async def later():\n    async with x:\n        import lapa.m8\n"
        "NOTE = 'import lapa.unused'\n"
    )
    files = {p.name for p in codehash.closure(tmp_path, ["lapa.tool"])}
    assert files == {"__init__.py", "tool.py", *(f"{name}.py" for name in names)}


def test_an_edit_within_one_timestamp_tick_changes_the_fingerprint(tmp_path):
    """Cached import lists follow the content, not the file's mtime (coarse on most file systems)."""
    pkg = tmp_path / "lapa"
    pkg.mkdir()
    for name in ["__init__", "a", "b"]:
        (pkg / f"{name}.py").write_text("")
    tool = pkg / "tool.py"
    tool.write_text("import lapa.a\n")
    stamp = tool.stat().st_mtime_ns
    before = codehash.fingerprint(tmp_path, ["lapa.tool"])
    assert "b.py" not in {p.name for p in codehash.closure(tmp_path, ["lapa.tool"])}
    tool.write_text("import lapa.b\n")  # same size
    os.utime(tool, ns=(stamp, stamp))
    assert "b.py" in {p.name for p in codehash.closure(tmp_path, ["lapa.tool"])}
    assert codehash.fingerprint(tmp_path, ["lapa.tool"]) != before


def test_config_param_names_an_unknown_key():
    from lapa_workflow.experiment import Experiment

    exp = Experiment.from_snakemake_config({"experiment": "tiny"}, REPO)
    assert exp.config_param(["laq.quantizer.vocab_size"]) != exp.config_param(["laq.quantizer"])
    with pytest.raises(ValueError, match="'laq.quantiser'"):
        exp.config_param(["laq.quantiser"])
    with pytest.raises(ValueError, match="'laq.nope' to leave out"):
        exp.config_param(["laq"], leave_out=["laq.nope"])
    # worker counts never decide an artifact
    assert "num_workers" not in exp.config_param(["data.loader"])


# -- finetuning seeds and evaluation seeds -------------------------------------------------------------
def experiment(name: str, *overrides: str):
    from lapa_workflow.experiment import Experiment

    return Experiment.from_snakemake_config({"experiment": name, "overrides": list(overrides)}, REPO)


def test_finetuning_seeds_must_be_distinct_non_negative_integers():
    assert experiment("tiny").finetune_seeds == [0]  # the quick experiments keep one seed
    assert experiment("tiny", "workflow.finetune_seeds=[3,1]").finetune_seeds == [3, 1]
    repeated = r"workflow.finetune_seeds must be .* without repeats, got \[1, 1\]: 1 repeated"
    with pytest.raises(ValueError, match=repeated):
        experiment("tiny", "workflow.finetune_seeds=[1,1]")
    for bad in ("[]", "[-1]"):
        with pytest.raises(ValueError, match="workflow.finetune_seeds .* non-empty list of integers >= 0"):
            experiment("tiny", f"workflow.finetune_seeds={bad}")


def test_evaluation_seeds_must_lie_in_no_training_range():
    # tiny: pretraining seeds [0, 4), demonstrations [100000, 100004), one evaluation episode per task
    overlap = r"evaluation seeds \[99999, 100001\).*demos seeds \[100000, 100004\)"
    with pytest.raises(ValueError, match=overlap):
        experiment("tiny", "sim.eval_seed=99999", "evaluation.episodes_per_task=2")
    experiment("tiny", "sim.eval_seed=99998", "evaluation.episodes_per_task=2")  # [99998, 100000): unseen
    overlap = r"evaluation seeds \[3, 4\).*pretrain seeds \[0, 4\).*sim.pretrain_seed"
    with pytest.raises(ValueError, match=overlap):
        experiment("tiny", "sim.eval_seed=3")
    # only the ranges this DAG renders: without closed-loop evaluation, or with LeRobot demonstrations
    experiment("tiny", "sim.eval_seed=3", "workflow.eval_sim=false")
    experiment("tiny", "sim.eval_seed=100000", "data.source=lerobot", "data.lerobot_root=/data/x")
    with pytest.raises(ValueError, match=r"pretraining seeds \[0, 4\).*overlap the demonstration seeds"):
        experiment("tiny", "sim.demo_seed=2")


@pytest.mark.parametrize("name", ["metaworld_small", "metaworld_full"])
def test_the_metaworld_experiments_run_the_protocol(name):
    """MT10, exactly 10 training demonstrations per task with some held out for every task, the same
    three or more finetuning seeds for every arm, at least 20 closed-loop episodes per task and seed
    on seeds no training set uses (checked when the experiment loads)."""
    exp = experiment(name)
    cfg = exp.cfg
    assert len(cfg.sim.tasks) == 10 and cfg.data.source == "metaworld"
    assert cfg.data.sharding.train_episodes_per_task == 10 < cfg.sim.demo_episodes_per_task
    assert list(cfg.workflow.arms) == ["lapa", "scratch", "action_pretrained"] and cfg.workflow.eval_sim
    assert len(exp.finetune_seeds) >= 3
    assert (cfg.evaluation.episodes_per_task or cfg.sim.eval_episodes_per_task) >= 20
    small = experiment("metaworld_small").cfg
    assert list(cfg.sim.tasks) == list(small.sim.tasks) and cfg.sim.max_steps == small.sim.max_steps
