"""Storage: tables, migrations and the store that reads and writes them."""
