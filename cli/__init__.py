"""Command-line front: parsing and rendering."""
