"""The behavioural contract suite: one set of tests, run for every backend with a job lifecycle."""
