"""Helpers shared by the tests and the benchmarks: a test exchange of real processes on ephemeral ports
(`testkit.cluster`), the simulated event flow of history (`testkit.history_sim`) and fake upstream
services serving it (`testkit.fake_upstream`). Nothing here is part of the shipped services."""
