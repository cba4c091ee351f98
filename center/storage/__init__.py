"""Tables, migrations, configuration and the data directory's files."""
