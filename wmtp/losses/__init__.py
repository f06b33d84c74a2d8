"""Pure tensor math for losses (torch only): `alignment` (MTP head/label shifts), `mtp` (chunked weighted
MTP cross-entropy), `value` (critic losses, by name). See docs/MATH.md."""
