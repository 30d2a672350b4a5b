"""minipacs: the archive core and process wiring."""
