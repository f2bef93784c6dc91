"""A student as data (spec), its blocks (layers), the one builder, and its cost (fvcore and analytic)."""
