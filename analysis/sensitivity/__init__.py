"""The sensitivity scan: its configuration, what it prepares once, the naive and fast engines, adaptive modes,
where it runs (this process, a Ray cluster) and the driver that yields finished units and builds the profile."""
