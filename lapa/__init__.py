"""lapa: Latent Action Pretraining from Videos.

Stages live in sub-packages (``data``, ``sim``, ``laq``, ``foundation``, ``finetune``,
``policy``, ``evaluation``); this top level stays import-light so that ``lapa --help`` is fast.
"""

__version__ = "0.1.0"
