"""The command-line entry that starts the roles, and the embedded servers used when no URLs are given."""
