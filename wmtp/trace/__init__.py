"""Tools that drive whole recipes without training (a floor above `wmtp.recipes`): the memory
trace (`memory`, `wmtp train ... --dry-run --trace`)."""
