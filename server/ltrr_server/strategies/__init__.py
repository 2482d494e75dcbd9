"""Candidate generators behind one small interface (``base.Strategy``), registered by kind."""
