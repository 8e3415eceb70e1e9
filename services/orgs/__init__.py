"""The orgs service."""
