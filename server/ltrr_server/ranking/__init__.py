"""Ranking: Search's second stage, which orders the retrieved union into the page a user sees."""
