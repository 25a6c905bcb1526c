"""HTTP/JSON front door: accounts, a durable job queue, the run registry, a leaderboard."""
