"""The Portico API gateway."""
