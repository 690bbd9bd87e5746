"""Integration tests: several processes, subprocesses, the demo, the commands as a user types them."""
