"""PECOS XR-Linear models: training, the registry, evaluation (the only importers of pecos)."""
