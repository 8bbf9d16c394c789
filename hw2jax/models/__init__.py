"""The models and their tasks: pure Flax modules and math, loss/eval beside each model."""
