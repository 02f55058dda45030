"""Meta-World rollouts (scripted experts) and closed-loop policy evaluation."""
