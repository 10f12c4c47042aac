"""Stage 1, the rows: load a dataset split (`tables`), render chat rows (`chat`), fingerprint and tokenize them
(`rows`), and the task metrics measured on their labels (`metrics`)."""
