"""retrieval: catalog items, memory statistics, shared action sets, unlearned decisions

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('decisions') as batch:
        batch.add_column(sa.Column('learn', sa.Boolean(), nullable=False, server_default=sa.true()))
    op.create_table('action_sets',
    sa.Column('key', sa.String(length=32), nullable=False),
    sa.Column('actions', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('catalog_items',
    sa.Column('idx', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('item_id', sa.String(length=256), nullable=False),
    sa.Column('data', sa.Text(), nullable=False),
    sa.Column('embedding', sa.LargeBinary(), nullable=True),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('idx'),
    sa.UniqueConstraint('item_id')
    )
    op.create_table('memory_stats',
    sa.Column('query', sa.String(length=512), nullable=False),
    sa.Column('item_id', sa.String(length=256), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('query', 'item_id')
    )


def downgrade() -> None:
    op.drop_table('memory_stats')
    op.drop_table('catalog_items')
    op.drop_table('action_sets')
    with op.batch_alter_table('decisions') as batch:
        batch.drop_column('learn')
