"""Retrieve: query features, plans as policy actions, running strategies, fusing, crediting."""
