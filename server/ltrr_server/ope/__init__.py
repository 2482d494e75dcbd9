"""Counterfactual (off-policy) evaluation of a policy's logged decisions.

``estimators`` holds the formulas, ``targets`` the policies that can be evaluated, ``evaluate`` the
pass over the log and ``jobs`` the process that runs it off the server's interpreter.
"""
