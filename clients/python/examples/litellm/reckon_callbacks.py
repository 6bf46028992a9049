"""Loaded by LiteLLM (`litellm_settings.callbacks: reckon_callbacks.reckon_budget`)."""

from reckon_client.litellm_hook import ReckonBudget

# Reads the YAML file named by RECKON_HOOK_CONFIG (reckon_hook.yaml here).
reckon_budget = ReckonBudget()
