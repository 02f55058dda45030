"""`python -m lapa_workflow.times` sums the benchmark files a real Snakemake run writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "lib"))

from lapa_workflow.times import main, read_job, rule_of, summarise  # noqa: E402

# Two rules named like the pipeline's, three jobs; the second rule's jobs burn CPU for a known
# time so that the CPU column is checked against something real.
SNAKEFILE = """
rule all:
    input: expand("eval/{arm}.txt", arm=["lapa", "scratch"]), "laq.txt"

rule train_laq:
    output: "laq.txt"
    benchmark: "bench/train_laq.tsv"
    shell: "touch {output}"

rule eval_sim:
    output: "eval/{arm}.txt"
    benchmark: "bench/eval_sim_{arm}_seed0.tsv"
    shell: "PYTHON burn.py && touch {output}"
"""
BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5:\n    pass\n"


def test_rule_names_from_job_files():
    assert rule_of("train_foundation_action_pretrained") == "train_foundation"
    assert rule_of("eval_sim_scratch_seed2") == "eval_sim"
    assert rule_of("shards_pairs") == "shards_pairs"
    assert rule_of("rollouts_pretrain") == "rollouts"
    assert rule_of("my_rule_seed3") == "my_rule"


def test_summary_of_a_real_snakemake_run(tmp_path, capsys):
    (tmp_path / "Snakefile").write_text(SNAKEFILE.replace("PYTHON", sys.executable))
    (tmp_path / "burn.py").write_text(BURN)
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "-q"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    rules, total = summarise(tmp_path / "bench")
    by = {r.rule: r for r in rules}
    assert [r.rule for r in rules] == ["train_laq", "eval_sim"]  # pipeline order
    assert by["eval_sim"].jobs == 2 and by["train_laq"].jobs == 1 and total.jobs == 3
    # each eval job burnt >= 0.5 s of CPU in its child process
    assert by["eval_sim"].cpu_s >= 0.9
    assert total.cpu_s == pytest.approx(sum(r.cpu_s for r in rules))
    assert total.max_rss_mb == max(r.max_rss_mb for r in rules) > 0
    assert main([str(tmp_path / "bench"), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("| rule | jobs |")
    assert "| eval_sim | 2 |" in out and "| total | 3 |" in out


def test_bad_inputs_are_named(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no Snakemake benchmark files" in capsys.readouterr().err
    bad = tmp_path / "broken.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="broken.tsv: not a Snakemake benchmark file"):
        read_job(bad)
    assert main([str(tmp_path)]) == 2
    assert "broken.tsv" in capsys.readouterr().err
    nonnumeric = tmp_path / "odd" / "train_laq.tsv"
    nonnumeric.parent.mkdir()
    nonnumeric.write_text("s\th:m:s\tmax_rss\tcpu_time\n12.5\t0:00:12\tabc\t3.0\n")
    with pytest.raises(ValueError, match=r"train_laq.tsv: line 2, column max_rss: 'abc' is not a number"):
        read_job(nonnumeric)
    na = tmp_path / "na" / "train_laq.tsv"
    na.parent.mkdir()
    na.write_text("s\th:m:s\tmax_rss\tcpu_time\n12.5\t0:00:12\tNA\t3.0\n")
    job = read_job(na)
    assert (job.wall_s, job.cpu_s, job.max_rss_mb) == (12.5, 3.0, 0.0)
