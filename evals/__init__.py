"""Eval suites, graders, the promotion gate and its reports (issue 6)."""
