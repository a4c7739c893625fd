"""Deleting an account: every domain forgets the user; the ledger keeps its rows, anonymized."""
