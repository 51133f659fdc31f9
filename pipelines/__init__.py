"""Pipeline definition, run settings and the local / Azure ML backends (not shipped into components)."""
