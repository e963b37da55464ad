"""De-identification policy: profiles, rules and the standard's tables they are built from."""
