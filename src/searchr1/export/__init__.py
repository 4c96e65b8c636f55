"""Exports of searchr1's data, reward and retrieval wiring to other training engines.

`searchr1 export verl` (`searchr1.export.verl.export_verl`) writes what veRL needs to train a
Search-R1 agent on a GPU cluster with vLLM/SGLang rollouts: parquet data in veRL's schema, our
reward as a veRL custom reward function (`searchr1.export.verl_reward`), our retrieval server
behind veRL's rollout (the paper's text protocol as a veRL agent loop, `searchr1.export.verl_agent`,
or a tool for veRL's tool-calling loop, `searchr1.export.verl_tool`), and a launch script.

Only `verl_agent` and `verl_tool` import veRL; everything else here runs without it.
"""

from searchr1.export.verl import ExportError, export_verl

__all__ = ["ExportError", "export_verl"]
