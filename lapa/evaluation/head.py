"""What an evaluation report records of the policy's head: how its logits became actions.

Both evaluation reports (``metrics.json`` of ``lapa eval-offline`` and ``lapa eval-sim``) carry
``head``, a mapping of ``HEAD_KEYS``:

- ``decoding``: how logits became the actions the report's figures come from (``argmax`` or
  ``expectation``, ``lapa.vla.heads.DECODINGS``): the policy's own (``LAPAPolicy.decoding``, from
  its ``config.json``; ``UNRECORDED_DECODING`` for a directory that records none), unless the
  offline evaluation was asked for another;
- ``num_bins``: bins per action dimension of the head;
- ``label_sigma`` and ``l1_weight``: the finetuning targets (``finetune.label_sigma``,
  ``finetune.l1_weight``) as the policy's ``config.json`` records them under
  ``training.target``; None for a policy trained before they were recorded.

``head`` is None for a policy without a binned head (the scripted baselines). ``lapa results``
refuses arms whose heads differ in any key (``lapa.evaluation.results``).
"""

from __future__ import annotations

from typing import Any

HEAD_KEYS = ("decoding", "num_bins", "label_sigma", "l1_weight")


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def head_settings(policy: Any, decoding: str | None = None) -> dict | None:
    """``HEAD_KEYS`` of ``policy`` (a ``LAPAPolicy``: its ``decoding``, ``stats.num_bins`` and
    ``config``), the decoding replaced by ``decoding`` when given; None for a policy without a
    binned head (no ``decoding`` attribute: ``ExpertPolicy``, ``ConstantPolicy``)."""
    if getattr(policy, "decoding", None) is None or getattr(policy, "stats", None) is None:
        return None
    config = getattr(policy, "config", None) or {}
    target = (config.get("training") or {}).get("target") or {}
    return {
        "decoding": str(decoding or policy.decoding),
        "num_bins": int(policy.stats.num_bins),
        "label_sigma": _float_or_none(target.get("label_sigma")),
        "l1_weight": _float_or_none(target.get("l1_weight")),
    }


def recorded_head(metrics: dict) -> dict:
    """A report's ``head`` with every key of ``HEAD_KEYS``, None where the report records none.

    Reports written before ``head`` was recorded: an offline one gives its top-level ``decoding``
    (the decoding of its figures) and nothing else; a closed-loop one nothing. A report whose
    ``head`` is null (a policy without a binned head) records nothing either.
    """
    head = metrics.get("head")
    if head is None and "head" not in metrics:
        head = {"decoding": metrics.get("decoding")}
    head = head or {}
    return {key: head.get(key) for key in HEAD_KEYS}
