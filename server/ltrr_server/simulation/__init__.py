"""Simulated traffic over the demo's music world, driven through a running server (`ltrr simulate`)."""
