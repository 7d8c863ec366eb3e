"""How long the test tiers take: `make test-fast` and `make test`, timed as a developer runs them."""
