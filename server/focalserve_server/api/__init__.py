"""HTTP layer: routes, dependencies and error rendering."""
