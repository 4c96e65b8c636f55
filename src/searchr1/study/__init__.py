"""`searchr1 study`: the paper's comparison (baselines against trained arms, several seeds) run
as one resumable command, with intervals, paired tests, curves and the paper's Table 2 layout.

  settings.py  StudyConfig (`study.*` keys)
  arms.py      what each arm is: its config, and whether it trains
  stats.py     bootstrap intervals, paired tests, the seed interval (pure functions)
  runner.py    the resumable loop: warm-up, each arm x seed, one record file per finished unit
  summary.py   records -> the numbers of study.json
  report.py    study.json -> study.md and study.html with SVG plots
  paper.py     the Search-R1 paper's published numbers, for the side-by-side rows
"""
