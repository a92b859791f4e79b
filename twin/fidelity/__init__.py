"""How well a twin predicts the testbed: recorded episodes, the twins, and the fidelity benchmark (issue 18)."""
