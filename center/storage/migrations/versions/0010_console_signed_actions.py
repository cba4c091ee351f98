"""Console login challenges record the client; console writes are signed (issue 11.2/11.3).

Revision ID: 0010
Revises: 0009

Each console login challenge keeps who asked for it, as the center saw the request: the
client's address (after the trusted-proxy rule, center.console.auth.source_address), the
group it is limited under (client_key: the IPv4 address, or the IPv6 /64), and its user agent
(printable ASCII, cut to 200 characters). `wallet console-login` shows them before it signs,
and the signed approval binds their hash. The per-client limits count rows by client_key and
creation time, hence the index. Top-up decisions need no column: they are signed
`operator_action` messages whose arguments name the top-up's member, amount and currency.
Challenges waiting at upgrade time get empty client facts; they expire within two minutes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "console_challenges", sa.Column("client_address", sa.String(64), nullable=False, server_default="")
    )
    op.add_column(
        "console_challenges", sa.Column("client_key", sa.String(64), nullable=False, server_default="")
    )
    op.add_column(
        "console_challenges", sa.Column("user_agent", sa.String(200), nullable=False, server_default="")
    )
    op.create_index("ix_console_challenges_client", "console_challenges", ["client_key", "created_at_ms"])


def downgrade() -> None:
    op.drop_index("ix_console_challenges_client", "console_challenges")
    with op.batch_alter_table("console_challenges") as batch:
        batch.drop_column("user_agent")
        batch.drop_column("client_key")
        batch.drop_column("client_address")
