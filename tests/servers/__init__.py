"""Real Valkey servers and proxies for the test suite, started on free loopback ports and stopped by PID."""
