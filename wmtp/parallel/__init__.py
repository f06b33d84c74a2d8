"""torch.distributed only (no ray): FSDP2 / activation checkpointing (`fsdp`), global reductions
and process-group set-up (`reduce`), DCP sharded checkpoints (`checkpointing`)."""
