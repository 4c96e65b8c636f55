"""The names the rl functions accept, torch-free: settings validate against these without
importing torch (`searchr1 config keys` starts in a fraction of a second)."""

__all__ = ["AGG_MODES", "KL_KINDS", "LLDS_GATES", "POLICY_LOSS_MODES"]

#: The loss aggregation modes understood by :func:`searchr1.rl.masked.aggregate_loss`.
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")

#: The KL estimator names understood by :func:`searchr1.rl.losses.kl_penalty` (aliases share a line).
KL_KINDS = ("k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl")

#: The policy loss modes of :func:`searchr1.rl.losses.policy_loss`: a ratio per token (PPO) or per sequence (GSPO).
POLICY_LOSS_MODES = ("ppo", "gspo")

#: The units whose likelihood drop switches LLDS on (:func:`searchr1.rl.losses.llds_loss`).
LLDS_GATES = ("action", "response")
