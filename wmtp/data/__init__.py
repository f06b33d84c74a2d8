"""Data: record schema (records), Alpaca template (template), metadata index (index), samplers,
collator, TrainingData (dataset), the bundled synthetic task (bundled, synth/), importers, and the
`wmtp data` subcommands (commands). Import the submodules directly; this package stays light so
`wmtp.data.errors.DataError` can be caught without importing torch or pyarrow."""
