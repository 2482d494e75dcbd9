"""Search pages and users' recent engagement

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('pages',
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('policy', sa.String(length=129), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('ranker', sa.String(length=160), nullable=False),
    sa.Column('ranker_version', sa.BigInteger(), nullable=False),
    sa.Column('probability', sa.Float(), nullable=False),
    sa.Column('swapped', sa.Integer(), nullable=True),
    sa.Column('user_id', sa.String(length=256), nullable=False),
    sa.Column('items', sa.Text(), nullable=False),
    sa.Column('features', sa.Text(), nullable=False),
    sa.Column('learn', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('event_id')
    )
    op.create_index('ix_pages_policy_created', 'pages', ['policy', 'created_at'], unique=False)
    op.create_table('user_history',
    sa.Column('user_id', sa.String(length=256), nullable=False),
    sa.Column('items', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('user_id')
    )
    op.create_index('ix_user_history_updated', 'user_history', ['updated_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_user_history_updated', table_name='user_history')
    op.drop_table('user_history')
    op.drop_index('ix_pages_policy_created', table_name='pages')
    op.drop_table('pages')
