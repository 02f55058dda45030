"""Meta-World rollouts (scripted experts) and closed-loop policy evaluation."""

import os

# Headless rendering. MuJoCo picks its OpenGL backend when first imported, so this must happen
# before anything imports mujoco (metaworld does); lapa.config imports this package early.
os.environ.setdefault("MUJOCO_GL", "egl")
