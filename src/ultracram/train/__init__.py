"""Training: pretraining (MLM under a budget) and GLUE fine-tuning."""
