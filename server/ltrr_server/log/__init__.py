"""The SQL event log: tables, migrations, the group-commit writer, the reward joiner."""
