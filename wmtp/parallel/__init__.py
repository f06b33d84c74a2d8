"""torch.distributed only (no ray): FSDP2 / activation checkpointing (`fsdp`), global reductions
and process-group set-up (`reduce`), the models as recipes hold them (`build`), export (`export`);
checkpoints themselves are `wmtp.checkpoint`'s."""
