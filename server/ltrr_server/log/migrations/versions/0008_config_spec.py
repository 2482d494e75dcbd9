"""policies.config_spec: the spec the config file declared when the server last read it

Revision ID: 0008
Revises: 0007

A restart compares the file's spec with it: the fields the file changed since apply, the fields
an admin changed in the database stay. NULL: a policy created over the API, or not read since.
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('policies', sa.Column('config_spec', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('policies') as batch:
        batch.drop_column('config_spec')
