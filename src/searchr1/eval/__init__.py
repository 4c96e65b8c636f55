"""Evaluation: `searchr1 eval` (benchmarks x modes -> results.json, results.md, report.html) and
`searchr1 ask` (one question through the agent, printed turn by turn).

  from searchr1.eval.harness import evaluate
  from searchr1.eval.metrics import aggregate, score_trajectory
  from searchr1.eval.ask import ask
"""
