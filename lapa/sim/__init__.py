"""Meta-World: seeded environments, scripted experts, rollouts recorded as LeRobot datasets.

Importing this package changes nothing in the process; the environment chooses headless
rendering (``MUJOCO_GL=egl`` unless already set) just before it first imports MuJoCo.
"""
