"""Real services for integration and end-to-end tests: each test gets its own."""
