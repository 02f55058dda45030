"""One natural-language instruction per Meta-World v3 task.

Meta-World ships no language; the VLA needs an instruction per episode. Each sentence names the
object and the motion so that tasks sharing an object (the drawer, the window, the button)
remain distinguishable from text alone. The sentences are unique, so an instruction also
identifies its task.
"""

from __future__ import annotations

INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "put the ring onto the peg",
    "basketball-v3": "dunk the ball into the basket",
    "bin-picking-v3": "move the cube from one bin to the other",
    "box-close-v3": "put the lid on the box",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button from the top behind the wall",
    "button-press-v3": "press the button",
    "button-press-wall-v3": "press the button behind the wall",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug away from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "pull the ring off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the lock",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the lock",
    "drawer-close-v3": "close the drawer",
    "drawer-open-v3": "open the drawer",
    "faucet-close-v3": "turn the faucet off",
    "faucet-open-v3": "turn the faucet on",
    "hammer-v3": "hammer the nail into the wall",
    "hand-insert-v3": "insert the hand into the hole",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg from the side",
    "pick-out-of-hole-v3": "pick the peg out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "plate-slide-back-side-v3": "slide the plate back from the side",
    "plate-slide-back-v3": "slide the plate back",
    "plate-slide-side-v3": "slide the plate into the goal from the side",
    "plate-slide-v3": "slide the plate into the goal",
    "push-back-v3": "push the puck back",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck to the goal around the wall",
    "reach-v3": "reach the goal position",
    "reach-wall-v3": "reach the goal position over the wall",
    "shelf-place-v3": "place the puck on the shelf",
    "soccer-v3": "kick the ball into the goal",
    "stick-pull-v3": "pull the container with the stick",
    "stick-push-v3": "push the container with the stick",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-close-v3": "close the window",
    "window-open-v3": "open the window",
}

_TASK_OF = {sentence: task for task, sentence in INSTRUCTIONS.items()}


class UnknownTaskError(KeyError, ValueError):
    """A task name Meta-World does not know (a KeyError for lookups, a ValueError for commands,
    which print it as a one-line error)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


def instruction_for(task: str) -> str:
    """The instruction of ``task``; ``UnknownTaskError`` (a KeyError and a ValueError) names the
    task, the ``sim.tasks`` key and the known tasks."""
    try:
        return INSTRUCTIONS[task]
    except KeyError:
        raise UnknownTaskError(
            f"sim.tasks: no Meta-World task {task!r}; known: {', '.join(sorted(INSTRUCTIONS))}"
        ) from None


def task_for(instruction: str) -> str:
    """The task an instruction was written for (instructions are unique)."""
    try:
        return _TASK_OF[instruction]
    except KeyError:
        raise KeyError(f"instruction {instruction!r} belongs to no Meta-World task") from None
