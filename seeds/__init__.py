"""The city as data: facility registry, seed generator, and the simulated facilities."""
