"""tenants: policy and model names hold "<tenant>/<name>" (up to 129 characters)

Revision ID: 0006
Revises: 0005

PostgreSQL enforces VARCHAR lengths; widening one changes only the catalog (no table rewrite).
SQLite does not enforce them: nothing to do there (a batch alter would copy every table).
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_COLUMNS = [("policies", "name"), ("decisions", "policy"), ("joined", "policy"), ("snapshots", "policy"),
            ("models", "name")]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in _COLUMNS:
        op.alter_column(table, column, type_=sa.String(length=129), existing_type=sa.String(length=64))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in _COLUMNS:
        op.alter_column(table, column, type_=sa.String(length=64), existing_type=sa.String(length=129))
