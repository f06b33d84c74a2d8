"""Pure tensor math for token weights (torch only): `gae` (GAE/TD(λ)), `normalize` (zscore/ema/none),
`weights` (exp/clip/renormalise), `rho1` (excess-loss weights).
Formulas and choices: docs/MATH.md."""
