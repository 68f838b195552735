"""Filter stages: each drops candidates (already seen, excluded, out of stock, …)."""
