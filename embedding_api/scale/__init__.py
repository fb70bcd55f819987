"""Past one machine: the HTTP application as Ray Serve replicas."""
