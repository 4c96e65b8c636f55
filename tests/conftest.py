"""Shared test setup: never touch the Hugging Face hub (these machines have no access)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
