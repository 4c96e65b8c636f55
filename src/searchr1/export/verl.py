"""`searchr1 export verl`: everything veRL needs to train a Search-R1 agent on a GPU cluster.

    searchr1 export verl -c paper-grpo-qwen2.5-3b --out runs/verl-grpo --retriever-url http://HOST:8000

writes, into one directory:

    train.parquet, val.parquet   veRL's RL data schema (below), prompts from `searchr1.protocol`
    agent_loop.yaml              the paper's <search>/<information> protocol as a veRL agent loop
                                 (`searchr1.export.verl_agent.SearchR1AgentLoop`), pointed at the server
    tool_config.yaml             a veRL search tool (`searchr1.export.verl_tool.SearchTool`) pointed
                                 at the server, for veRL's tool-calling loop (`--agent tool`)
    train.sh                     `python3 -m verl.trainer.main_ppo` with the config's hyperparameters
    serve_retriever.sh           `searchr1 serve` for the index the rollouts search
    README.md, export.json       what is here, what needs GPUs, the exact overrides

The reward is not a file: veRL imports `pkg://searchr1.export.verl_reward` (`compute_score`), so
searchr1 must be installed wherever veRL runs.

Rows (one per question):

    data_source   the dataset (nq, hotpotqa, ..., synthetic): veRL groups validation metrics by it
    prompt        [{"role": "user", "content": <the Search-R1 instruction with the question>}]
    ability       "fact-reasoning"
    reward_model  {"style": "rule", "ground_truth": {"target": [gold answers]}}
    extra_info    {"split", "index", "id", "question", "need_tools_kwargs",
                   "tools_kwargs": {"search": {"create_kwargs": {"ground_truth", "question", "data_source"}}}}
    agent_name    "searchr1_agent" (paper protocol) or "tool_agent" (veRL's tool-calling loop)

Training and validation rows are the questions `searchr1 train` trains and validates on
(`searchr1.data.questions`: train.questions.datasets / split / limit; eval.datasets / split /
limit / seed, or the synthetic world's held-out questions); train.sh's overrides come from
`searchr1.export.verl_plan`. Every dataset is read and every file rendered before the first is
written; each file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from searchr1 import __version__
from searchr1.atomic import write_parquet_atomic, write_text_atomic
from searchr1.data.questions import NoQuestionsError, held_out_questions, sources, training_questions
from searchr1.errors import MissingDependencyError, SearchR1Error
from searchr1.export.verl_plan import AGENT_NAMES, Plan, verl_plan
from searchr1.protocol import TOOL_CALL_TEMPLATE, build_prompt, get_template
from searchr1.retrieval.client import retrieve_url

AGENTS = ("searchr1", "tool")
ROLLOUT_ENGINES = ("vllm", "sglang")
ABILITY = "fact-reasoning"
AGENT_LOOP_TARGET = "searchr1.export.verl_agent.SearchR1AgentLoop"
TOOL_CLASS = "searchr1.export.verl_tool.SearchTool"
#: veRL version the exported overrides were checked against (hydra composition of its ppo_trainer).
VERL_VERSION = "0.9.1"

#: The Search-R1 instruction reworded for a search TOOL (veRL's tool-calling loop, --agent tool): the
#: template of our own tool-call protocol (agent.protocol=tool_call).
TOOL_TEMPLATE = TOOL_CALL_TEMPLATE

FILES = ("train.parquet", "val.parquet", "agent_loop.yaml", "tool_config.yaml", "train.sh",
         "serve_retriever.sh", "README.md", "export.json")


class ExportError(SearchR1Error):
    """An export that cannot be written as asked (bad option, output directory in the way)."""


@dataclass
class ExportOptions:
    """What `searchr1 export verl` takes besides the root Config (its command-line flags)."""

    out_dir: str = "runs/verl"
    force: bool = False
    agent: str = "searchr1"
    retriever_url: str = ""  # '' = retriever.url of the config, else http://127.0.0.1:8000
    rollout: str = "vllm"
    nnodes: int = 1
    gpus_per_node: int = 8
    config_name: str = ""  # the preset the config came from, for the script's header

    def __post_init__(self) -> None:
        if self.agent not in AGENTS:
            raise ExportError(f"--agent must be one of {', '.join(AGENTS)}, got {self.agent!r}")
        if self.rollout not in ROLLOUT_ENGINES:
            raise ExportError(f"--rollout must be one of {', '.join(ROLLOUT_ENGINES)}, got {self.rollout!r}")
        if self.nnodes < 1 or self.gpus_per_node < 1:
            raise ExportError("--nnodes and --gpus-per-node must be >= 1")
        if not self.out_dir:
            raise ExportError("--out must name a directory")


# ----------------------------------------------------------------------------- rows


def retrieval_base_url(url: str) -> str:
    """`http://host:port` (no trailing /retrieve) from any form a user gives; ExportError if malformed."""
    from urllib.parse import urlsplit

    full = retrieve_url(url)
    parts = urlsplit(full)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ExportError(f"retriever URL {url!r} is not an http(s) URL such as http://10.0.0.5:8000")
    try:
        parts.port
    except ValueError:
        raise ExportError(f"retriever URL {url!r} has an invalid port") from None
    return full[: -len("/retrieve")]


def load_rows(cfg) -> tuple[list[dict], list[dict], dict]:
    """(train rows, validation rows, where they came from): `searchr1 train`'s questions, and its
    held-out ones one after another; rows are {id, question, golden_answers, data_source}."""
    try:
        train = training_questions(cfg)
    except NoQuestionsError as e:
        raise ExportError(str(e)) from None
    val = [row for rows in held_out_questions(cfg).values() for row in rows]
    if not val:
        raise ExportError("the validation data (eval.datasets) gave no questions")
    return train, val, sources(cfg)


def prompt_text(question: str, agent: str, template: str) -> str:
    """The user message of one row: Search-R1's instruction (or its tool wording) with the question."""
    return build_prompt(question, template=TOOL_TEMPLATE if agent == "tool" else template, chat=False)


def verl_row(row: dict, split: str, index: int, agent: str, template: str) -> dict:
    """One row in veRL's schema (see the module docstring)."""
    question = str(row["question"])
    data_source = str(row.get("data_source") or "qa")
    ground_truth = {"target": [str(a) for a in row["golden_answers"]]}
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": prompt_text(question, agent, template)}],
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {
            "split": split,
            "index": index,
            "id": str(row.get("id", index)),
            "question": question,
            "need_tools_kwargs": agent == "tool",
            "tools_kwargs": {"search": {"create_kwargs": {
                "ground_truth": ground_truth, "question": question, "data_source": data_source}}},
        },
        "agent_name": AGENT_NAMES[agent],
    }


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("writing veRL parquet files needs pyarrow: pip install pyarrow") from None
    return pa, pq


def verl_schema(pa):
    text = pa.string()
    gold = pa.struct([("target", pa.list_(text))])
    create = pa.struct([("ground_truth", gold), ("question", text), ("data_source", text)])
    return pa.schema([
        ("data_source", text),
        ("prompt", pa.list_(pa.struct([("role", text), ("content", text)]))),
        ("ability", text),
        ("reward_model", pa.struct([("style", text), ("ground_truth", gold)])),
        ("extra_info", pa.struct([
            ("split", text), ("index", pa.int64()), ("id", text), ("question", text),
            ("need_tools_kwargs", pa.bool_()),
            ("tools_kwargs", pa.struct([("search", pa.struct([("create_kwargs", create)]))])),
        ])),
        ("agent_name", text),
    ])


def _table(rows: list[dict]):
    pa, _ = _pyarrow()
    return pa.Table.from_pylist(rows, schema=verl_schema(pa))


# ----------------------------------------------------------------------------- configs


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)


def chat_mode(cfg, agent: str) -> str:
    """How the agent loop turns the prompt into ids: raw text (base models) or the chat template."""
    if agent == "tool" or cfg.agent.protocol == "tool_call":
        return "template"  # tool calls live in the chat template
    return "raw" if cfg.model.chat == "raw" else "template"


def agent_loop_config(cfg, url: str) -> list[dict]:
    a = cfg.agent
    return [{
        "name": AGENT_NAMES["searchr1"],
        "_target_": AGENT_LOOP_TARGET,
        "retrieval_url": url,
        "topk": a.topk,
        "max_turns": a.max_turns,
        "max_turn_tokens": a.max_turn_tokens,
        "max_obs_tokens": a.max_obs_tokens,
        "chat": chat_mode(cfg, "searchr1"),
        "protocol": a.protocol,
        "timeout_s": cfg.retriever.timeout_s,
        "retrieval_attempts": a.retrieval_attempts,
        "retrieval_backoff_s": a.retrieval_backoff_s,
        "retrieval_token_env": cfg.retriever.token,
    }]


#: The search function schema of veRL's search_r1_like example (name `search`, argument `query_list`).
TOOL_SCHEMA: dict = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Searches a Wikipedia search engine and returns the top passages for each query.",
        "parameters": {
            "type": "object",
            "properties": {
                "query_list": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "A list of fully-formed search queries; the tool returns passages for each.",
                },
            },
            "required": ["query_list"],
        },
    },
}


def tool_config(cfg, url: str) -> dict:
    return {"tools": [{
        "class_name": TOOL_CLASS,
        "config": {
            "type": "native",
            "retrieval_service_url": retrieve_url(url),
            "topk": cfg.agent.topk,
            "timeout": cfg.retriever.timeout_s,
            "retries": cfg.agent.retrieval_attempts - 1,
            "backoff": cfg.agent.retrieval_backoff_s,
            "rate_limit": 120,
            "num_workers": 120,
            "token_env": cfg.retriever.token,
        },
        "tool_schema": TOOL_SCHEMA,
    }]}


# ----------------------------------------------------------------------------- scripts and docs


def train_script(plan: Plan, opts: ExportOptions, url: str, version: str, token_env: str = "") -> str:
    args = " \\\n    ".join(o.shell_arg() for o in plan.overrides)
    # the token is read from the environment on the machine that runs the check, never written here
    auth = (f'; h = {{"Authorization": "Bearer " + os.environ["{token_env}"]}}' if token_env else "; h = {}")
    source = opts.config_name or "the default config"
    return f"""#!/usr/bin/env bash
# Search-R1 training on veRL, written by `searchr1 export verl` (searchr1 {version}) from {source}.
# Needs GPUs (the paper used 8 x H100 for Qwen2.5-3B), veRL {VERL_VERSION} with {opts.rollout},
# searchr1 installed on every node (for the reward and the {AGENT_NAMES[opts.agent]} loop), a Ray cluster
# when NNODES > 1, and the retrieval server running at {url} (see serve_retriever.sh){f"; the server's bearer token in ${token_env}" if token_env else ""}.
# Extra arguments are passed on to veRL as overrides, e.g. trainer.total_training_steps=10.
# Environment: NNODES, GPUS_PER_NODE, PYTHON (default python3), SKIP_RETRIEVER_CHECK=1.
set -euo pipefail
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
RETRIEVER_URL="{url}"
NNODES="${{NNODES:-{opts.nnodes}}}"
GPUS_PER_NODE="${{GPUS_PER_NODE:-{opts.gpus_per_node}}}"
PYTHON="${{PYTHON:-python3}}"

if [ "${{SKIP_RETRIEVER_CHECK:-0}}" != "1" ] && ! "$PYTHON" -c 'import os, sys, urllib.request{auth}; urllib.request.urlopen(urllib.request.Request(sys.argv[1], headers=h), timeout=10)' "$RETRIEVER_URL/health" >/dev/null 2>&1; then
    echo "train.sh: no retrieval server answers at $RETRIEVER_URL/health; start one (bash $HERE/serve_retriever.sh)" >&2
    echo "          on a machine every rollout worker can reach, or re-export with --retriever-url." >&2
    exit 1
fi

exec "$PYTHON" -m verl.trainer.main_ppo \\
    {args} \\
    "$@"
"""


def serve_script(cfg, url: str, version: str) -> str:
    from urllib.parse import urlsplit

    port = urlsplit(url).port or 8000
    token = cfg.retriever.token
    index = cfg.retriever.index
    index_line = (f'INDEX="${{INDEX:-{index}}}"' if index
                  else 'INDEX="${INDEX:?set INDEX to the index directory (searchr1 index build ...)}"')
    return f"""#!/usr/bin/env bash
# The retrieval server the rollouts search, written by `searchr1 export verl` (searchr1 {version}).
# Run it on one machine that every rollout worker reaches at {url}; BM25 runs on CPU, a dense
# index (e5 + faiss) wants a GPU or many cores. One server batches the searches of all rollouts.
# It binds 127.0.0.1 unless HOST says otherwise: HOST=0.0.0.0 serves other machines, which then
# should need a bearer token (server.token=VARIABLE, the token in that environment variable).
# Extra arguments are config overrides, e.g. retriever.method=dense server.max_batch_queries=512.
set -euo pipefail
{index_line}
HOST="${{HOST:-127.0.0.1}}"
exec searchr1 serve retriever.index="$INDEX" retriever.topk={cfg.retriever.topk} server.host="$HOST" server.port={port} {f"server.token={token} " if token else ""}"$@"
"""


def readme(opts: ExportOptions, url: str, summary: dict, plan: Plan, version: str) -> str:
    notes = "\n".join(f"- {n}" for n in plan.notes) or "- none"
    agent = AGENT_NAMES[opts.agent]
    if opts.agent == "searchr1":
        how = ("Rollouts follow the paper's text protocol: `searchr1.export.verl_agent.SearchR1AgentLoop` "
               "(registered by `agent_loop.yaml`) generates until `</search>` or `</answer>`, retrieves the "
               "query's passages from the server and appends them inside `<information>` with response mask 0.")
    else:
        how = ("Rollouts use veRL's tool-calling loop (`tool_agent`, hermes JSON tool calls) with the search "
               "tool of `tool_config.yaml` (`searchr1.export.verl_tool.SearchTool`). This is not the paper's "
               "`<search>` protocol; use it for instruct models trained with tool calls.")
    return f"""# Search-R1 on veRL

Written by `searchr1 export verl` (searchr1 {version}) from {opts.config_name or 'the default config'}.

| file | what |
| --- | --- |
| `train.parquet` | {summary['train_rows']} training questions ({summary['sources']['train']}) |
| `val.parquet` | {summary['val_rows']} validation questions ({summary['sources']['val']}) |
| `agent_loop.yaml` | the `searchr1_agent` loop (paper protocol) and its retrieval settings |
| `tool_config.yaml` | a `search` tool for veRL's tool-calling loop, pointed at the same server |
| `train.sh` | `python3 -m verl.trainer.main_ppo` with the hyperparameters (see `export.json`) |
| `serve_retriever.sh` | `searchr1 serve` for the index the rollouts search |

Agent: `{agent}`. {how}
Reward: `pkg://searchr1.export.verl_reward` `compute_score`, i.e. `searchr1.rewards.compute_score` on
the decoded response, the same function `searchr1 train` and `searchr1 eval` use.
Retriever: {url} (baked into `agent_loop.yaml` and `tool_config.yaml`; re-export with
`--retriever-url` to change it).

## Run

1. On every node: `pip install verl=={VERL_VERSION} {opts.rollout}` and searchr1 (same version).
   For several nodes start Ray first (`ray start --head` on one, `ray start --address=HEAD:6379` on
   the others).
2. On one machine that all nodes reach: `INDEX=path/to/index bash serve_retriever.sh`.
3. On the head node: `NNODES={opts.nnodes} GPUS_PER_NODE={opts.gpus_per_node} bash train.sh`
   (extra `key=value` arguments go to veRL).

## What needs GPUs

Everything `train.sh` starts: veRL's FSDP actor/critic/reference workers and the {opts.rollout}
rollout servers need CUDA GPUs. The retrieval server does not (BM25 runs on CPU; a dense e5 index
is faster on a GPU). Checked on CPU against veRL {VERL_VERSION}: the overrides compose with veRL's
own `ppo_trainer` config, veRL's reward loader loads and runs the reward, veRL's tool registry loads
`tool_config.yaml` and the tool searches a running `searchr1 serve`, and the agent loop plays
episodes through veRL's `AgentLoopBase` with a stand-in for the rollout server.

## Differences from `searchr1 train`

{notes}
"""


# ----------------------------------------------------------------------------- the command


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"output directory {out} is not empty: choose another --out or pass --force "
                          f"(existing files of the same names are replaced)")




def export_verl(cfg, opts: ExportOptions | None = None, **kwargs: Any) -> dict:
    """Write the veRL export of `cfg` (a root `searchr1.settings.Config`); return a summary.

    Options come as an `ExportOptions` or as its fields in keyword arguments.
    """
    opts = opts or ExportOptions(**kwargs)
    out = Path(opts.out_dir).expanduser()
    _check_out_dir(out, opts.force)
    url = retrieval_base_url(opts.retriever_url or cfg.retriever.url or "http://127.0.0.1:8000")
    try:
        get_template(cfg.agent.template)
    except ValueError as e:
        raise ExportError(str(e)) from None

    train, val, sources = load_rows(cfg)
    template = cfg.agent.template
    train_table = _table([verl_row(r, "train", i, opts.agent, template) for i, r in enumerate(train)])
    val_table = _table([verl_row(r, "val", i, opts.agent, template) for i, r in enumerate(val)])
    shell = {
        "data.train_files": '"$HERE/train.parquet"',
        "data.val_files": '"$HERE/val.parquet"',
        "actor_rollout_ref.rollout.agent.agent_loop_config_path": '"$HERE/agent_loop.yaml"',
        "actor_rollout_ref.rollout.multi_turn.tool_config_path": '"$HERE/tool_config.yaml"',
        "trainer.nnodes": '"$NNODES"',
        "trainer.n_gpus_per_node": '"$GPUS_PER_NODE"',
    }
    plan = verl_plan(cfg, agent=opts.agent, rollout=opts.rollout, train_files=str(out.resolve() / "train.parquet"),
                     val_files=str(out.resolve() / "val.parquet"),
                     agent_loop_path=str(out.resolve() / "agent_loop.yaml"),
                     tool_config_path=str(out.resolve() / "tool_config.yaml"), nnodes=opts.nnodes,
                     gpus_per_node=opts.gpus_per_node, train_rows=len(train), shell=shell)
    summary = {
        "out_dir": str(out),
        "agent": opts.agent,
        "agent_name": AGENT_NAMES[opts.agent],
        "retriever_url": url,
        "rollout": opts.rollout,
        "train_rows": train_table.num_rows,
        "val_rows": val_table.num_rows,
        "sources": sources,
        "notes": plan.notes,
    }
    texts = {
        "agent_loop.yaml": _yaml(agent_loop_config(cfg, url)),
        "tool_config.yaml": _yaml(tool_config(cfg, url)),
        "train.sh": train_script(plan, opts, url, __version__, cfg.retriever.token),
        "serve_retriever.sh": serve_script(cfg, url, __version__),
        "README.md": readme(opts, url, summary, plan, __version__),
        "export.json": json.dumps({
            "searchr1_version": __version__, "verl_version_checked": VERL_VERSION,
            "options": dataclasses.asdict(opts), **summary,
            "overrides": [o.literal() for o in plan.overrides],
            "config": dataclasses.asdict(cfg),
        }, indent=2, ensure_ascii=False, default=str) + "\n",
    }

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create output directory {out}: {e}") from None
    write_parquet_atomic(train_table, out / "train.parquet")
    write_parquet_atomic(val_table, out / "val.parquet")
    for name, text in texts.items():
        try:
            write_text_atomic(out / name, text)
        except OSError as e:
            raise ExportError(f"cannot write {out / name}: {e}") from None
    for name in ("train.sh", "serve_retriever.sh"):
        (out / name).chmod(0o755)
    summary["files"] = [str(out / name) for name in FILES]
    return summary
