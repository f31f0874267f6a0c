"""Huren's core: app assembly, configuration, registry, federation, storage and policy."""
