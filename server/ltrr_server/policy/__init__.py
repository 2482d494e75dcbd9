"""VW-backed policy models. The only package that imports vowpal_wabbit_next."""
