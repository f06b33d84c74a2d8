"""The synthetic verifiable code task: template families, execution-based labels, split by problem."""

from wmtp.data.synth.families import FAMILIES, Family
from wmtp.data.synth.generator import Problem, SynthDataset, generate

__all__ = ["FAMILIES", "Family", "Problem", "SynthDataset", "generate"]
