"""Online preference learning: samplers, judges, pairs, and the iteration loop."""
