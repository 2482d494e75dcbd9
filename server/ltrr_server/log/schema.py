"""Event-log tables (SQLAlchemy Core). Alembic migrations in ``migrations/`` create them."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# Policy and model names with their tenant ("<tenant>/<name>", tenancy.py): 64 + 1 + 64.
INSIDE = 129

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT.
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

policies = sa.Table(
    "policies", metadata,
    sa.Column("name", sa.String(INSIDE), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("lineage", sa.Integer, nullable=False),
    # Joined events before this position belong to earlier lineages: never replayed.
    sa.Column("lineage_start_seq", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # The spec the config file declared when last read (NULL: created over the API): a restart
    # applies the fields the file changed since, and keeps those an admin changed.
    sa.Column("config_spec", sa.Text, nullable=True),
)

decisions = sa.Table(
    "decisions", metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("policy", sa.String(INSIDE), nullable=False),
    sa.Column("lineage", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("deadline", sa.Float, nullable=False),
    sa.Column("context", sa.Text, nullable=False),
    sa.Column("actions", sa.Text, nullable=False),
    # Per slot, the probability of every action, exactly as drawn.
    sa.Column("probabilities", sa.Text, nullable=False),
    # Per slot, the chosen action index.
    sa.Column("chosen", sa.Text, nullable=False),
    sa.Column("explored", sa.Boolean, nullable=False),
    sa.Column("model_version", sa.BigInteger, nullable=False),
    sa.Index("ix_decisions_policy_created", "policy", "created_at"),
    # False for decisions the policy did not draw (a fixed plan asked for by the caller): they are
    # joined and credited, never learned or replayed.
    sa.Column("learn", sa.Boolean, nullable=False, server_default=sa.true()),
)

rewards = sa.Table(
    "rewards", metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("reward_id", sa.String(128), nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("engaged", sa.Text, nullable=True),
    sa.Column("oracle_best", sa.Float, nullable=True),
    sa.Column("oracle_chosen", sa.Float, nullable=True),
    # accepted | late
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.UniqueConstraint("event_id", "reward_id", name="uq_rewards_event_reward"),
)

joined = sa.Table(
    "joined", metadata,
    # Assigned by the server in join order: the learner's and the snapshots' position.
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("policy", sa.String(INSIDE), nullable=False),
    sa.Column("reward", sa.Float, nullable=False),
    sa.Column("n_rewards", sa.Integer, nullable=False),
    # reward | default
    sa.Column("source", sa.String(8), nullable=False),
    sa.Column("oracle_best", sa.Float, nullable=True),
    sa.Column("oracle_chosen", sa.Float, nullable=True),
    sa.Column("joined_at", sa.Float, nullable=False),
    sa.Index("ix_joined_policy_seq", "policy", "seq"),
)

snapshots = sa.Table(
    "snapshots", metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("policy", sa.String(INSIDE), nullable=False),
    sa.Column("lineage", sa.Integer, nullable=False),
    sa.Column("model_version", sa.BigInteger, nullable=False),
    sa.Column("last_joined_seq", sa.BigInteger, nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("size_bytes", sa.Integer, nullable=False),
    sa.Column("model", sa.LargeBinary, nullable=False),
    sa.Index("ix_snapshots_policy_id", "policy", "id"),
)

# Action lists shared by many decisions (a retrieval policy's plans), stored once: a decision's
# `actions` column then holds "#<key>" instead of the list.
action_sets = sa.Table(
    "action_sets", metadata,
    sa.Column("key", sa.String(32), primary_key=True),
    sa.Column("actions", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

catalog_items = sa.Table(
    "catalog_items", metadata,
    # Dense position of the item in every index (tantivy doc field, ANN key).
    sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("item_id", sa.String(256), nullable=False, unique=True),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("embedding", sa.LargeBinary, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# The memory strategy's query-to-item statistics. item_id "" holds the query's impressions.
memory_stats = sa.Table(
    "memory_stats", metadata,
    sa.Column("query", sa.String(512), primary_key=True),
    sa.Column("item_id", sa.String(256), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# Trained models (XR-Linear, ...) by name and version; files live under the model directory.
models = sa.Table(
    "models", metadata,
    sa.Column("name", sa.String(INSIDE), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    # JSON: training parameters and figures measured at training (recall on held-out pairs, ...).
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("live", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("promoted_at", sa.Float, nullable=True),
)

# Facts about the database itself: its identity ("database_id"), written once.
meta = sa.Table(
    "ltrr_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# API keys (keys.py): what a bearer key may do and for which tenant. The key itself is never
# stored: only a salted SHA-256 of its secret part; ``id`` is the part a key shows in clear.
api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    # Comma-separated: decide, feedback, admin.
    sa.Column("roles", sa.String(64), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("salt", sa.String(32), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    # A client certificate with this subject (mutual TLS) acts as this key without a bearer token.
    sa.Column("subject", sa.String(256), nullable=True),
    # Quotas; NULL: the server's limits.key_* defaults.
    sa.Column("decisions_per_second", sa.Integer, nullable=True),
    sa.Column("rewards_per_second", sa.Integer, nullable=True),
    sa.Column("max_streams", sa.Integer, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

# Every admin change (audit.py): who, when, what, and the thing before and after (JSON).
audit = sa.Table(
    "audit", metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("target", sa.String(256), nullable=False),
    sa.Column("before_json", sa.Text, nullable=True),
    sa.Column("after_json", sa.Text, nullable=True),
    sa.Index("ix_audit_at", "at"),
)

# Search pages (ranking/ranking.py): what was shown for an event, in order, with each shown item's
# features as the ranker saw them: what `ltrr train ranker` learns from, with the rewards'
# engaged items. ``order`` says who ordered the page; ``swapped`` the adjacent pair the ranker
# swapped (its first position, from 0), with the page's probability.
pages = sa.Table(
    "pages", metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("policy", sa.String(INSIDE), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("ranker", sa.String(160), nullable=False),
    sa.Column("ranker_version", sa.BigInteger, nullable=False),
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("swapped", sa.Integer, nullable=True),
    sa.Column("user_id", sa.String(256), nullable=False),
    # JSON: the shown item ids in page order.
    sa.Column("items", sa.Text, nullable=False),
    # JSON: {"names": [...], "rows": [[...], ...], "kinds": [...]}, a row per shown item.
    sa.Column("features", sa.Text, nullable=False),
    sa.Column("learn", sa.Boolean, nullable=False),
    sa.Index("ix_pages_policy_created", "policy", "created_at"),
)

# Users' recent engagement (ranking/users.py): the last items each user engaged with, newest last.
user_history = sa.Table(
    "user_history", metadata,
    sa.Column("user_id", sa.String(256), primary_key=True),
    sa.Column("items", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_user_history_updated", "updated_at"),
)
