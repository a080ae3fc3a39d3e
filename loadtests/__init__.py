"""Load tests: locust users for loopgate and the headless runner with SLO checks."""
