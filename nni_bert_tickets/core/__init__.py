"""The pruning core: prunable targets, masks, tickets, the pruners, baselines, torch and torch-pruning interop."""
