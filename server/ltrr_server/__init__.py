"""ltrr server: contextual-bandit policies over gRPC, with a SQL event log and online learning."""

__version__ = "0.1.0"
