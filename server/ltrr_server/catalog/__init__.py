"""The item catalog: parsing catalog lines, the items in memory and in SQL, ingest."""
